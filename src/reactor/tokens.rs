//! Subscription tokens on live streams: installing a stream's grant with
//! one timer at its expiry, ending the stream when it expires (SSE:
//! `event: token_expired` naming the id to resume from; WebSocket: close
//! 4001), checking each WebSocket subscribe against the token's channels,
//! and the `auth` command that refreshes a WebSocket's token in place.
//!
//! The expiry is a wall-clock time (the token's `exp`); the timer runs on
//! the reactor clock, so it is armed for "how long from now" and checks
//! the wall clock again when it fires: a refresh that moved the expiry
//! later, or a clock that stepped, re-arms instead of ending the stream.

use super::timer::TimerKind;
use super::Worker;
use crate::api::ws::{authorized_frame, revoked_frame, CommandError};
use crate::conn::{Authorized, ConnState, Ws};
use crate::metrics::WorkerStats;
use crate::proto::sse;
use crate::proto::ws::close_code;
use crate::tokens::{unix_now_ms, Grant, SubjectSlot};

/// When `grant` expires on the reactor clock, whose time is `now`.
fn expiry(grant: &Grant, now: u64) -> u64 {
    now.saturating_add(grant.expires_ms.saturating_sub(unix_now_ms()))
}

impl Worker {
    /// Gives a stream that just started its token (if it has one) and
    /// arms the timer that ends the stream at its expiry.
    pub(super) fn install_token(&mut self, key: usize, grant: Option<Box<Grant>>, now: u64) {
        let Some(grant) = grant else { return };
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let at = expiry(&grant, now);
        let token = Authorized {
            grant,
            timer_at: at,
        };
        match &mut conn.state {
            ConnState::Sse(sse) => sse.set_token(token),
            ConnState::Ws(ws) => ws.extra_mut().token = Some(token),
            ConnState::Request(_) | ConnState::Closing { .. } => return,
        }
        self.timers.schedule(at, key, conn.gen, TimerKind::Token);
    }

    /// The expiry timer: ignored unless it is the live one; then end the
    /// stream if its token expired, else (refreshed) arm for the new time.
    pub(super) fn token_due(&mut self, key: usize, now: u64) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let gen = conn.gen;
        let Some(token) = conn.state.token_mut() else {
            return;
        };
        if now < token.timer_at {
            return;
        }
        let at = expiry(&token.grant, now);
        if at > now {
            token.timer_at = at;
            return self.timers.schedule(at, key, gen, TimerKind::Token);
        }
        WorkerStats::add(&self.stats().token_expiries, 1);
        self.end_for_token(key, now);
    }

    /// Ends a stream whose token expired. An SSE stream keeps what is
    /// queued (it goes out first) and then names the last event queued
    /// before any drop, so a client resuming from it with a fresh token
    /// loses nothing; a WebSocket client resubscribes with the `since`
    /// of what it received.
    fn end_for_token(&mut self, key: usize, now: u64) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let sse = match &mut conn.state {
            ConnState::Sse(sse) => sse,
            ConnState::Ws(_) => {
                let code = close_code::TOKEN_EXPIRED;
                return self.close_ws(key, code, "token expired", now);
            }
            ConnState::Request(_) | ConnState::Closing { .. } => return,
        };
        let d = &sse.delivery;
        let resume = d.resume_id(d.last_queued());
        let resume = match sse.is_composite() {
            true => sse.composite_text(),
            false => resume.map(|id| self.shared.hub.show_id(id)),
        };
        let last = sse.last(&sse::token_expired(resume.as_deref()));
        self.close_gracefully(key, Some(last), false, now);
    }

    /// Whether this WebSocket's token lets it subscribe to `channel`.
    pub(super) fn token_allows(&self, key: usize, channel: &str) -> Result<(), CommandError> {
        let Some(ConnState::Ws(ws)) = self.conns.get(key).map(|c| &c.state) else {
            return Ok(());
        };
        match ws.token() {
            Some(t) if t.grant.allows(channel) => Ok(()),
            Some(_) => {
                WorkerStats::add(&self.stats().rejected_channel, 1);
                let why = format!("the token does not allow channel {channel}");
                Err(("channel_not_allowed", why))
            }
            // Opened before a reload turned token mode on.
            None if self.shared.access.policy().required() => Err((
                "token_required",
                "send {\"type\":\"auth\",\"token\":\"<JWT>\"} first".into(),
            )),
            None => Ok(()),
        }
    }

    /// `{"type":"auth"}`: a fresh token of the same subject replaces the
    /// WebSocket's token (the ack goes first); subscriptions it no longer
    /// allows end, each with an `unsubscribed` naming the reason.
    pub(super) fn ws_auth(&mut self, key: usize, token: &str) -> Result<(), CommandError> {
        let now = self.now_ms();
        let policy = self.shared.access.policy();
        if !policy.required() {
            return Err((
                "not_needed",
                "auth.subscribe is open: no token needed".into(),
            ));
        }
        let grant = policy
            .verify(token, unix_now_ms())
            .map_err(|e| ("bad_token", e.to_string()))?;
        drop(policy);
        let (exp, at) = (grant.exp, expiry(&grant, now));
        let subjects = self.shared.access.subjects.clone();
        let Some(conn) = self.conns.get_mut(key) else {
            return Ok(());
        };
        let gen = conn.gen;
        let ConnState::Ws(ws) = &mut conn.state else {
            return Ok(());
        };
        let Ws {
            channels, extra, ..
        } = &mut **ws;
        let extra = extra.get_or_insert_with(Box::default);
        let token = match &mut extra.token {
            Some(held) => {
                held.grant
                    .renew(grant)
                    .map_err(|e| ("bad_token", e.to_string()))?;
                held
            }
            None => {
                let mut grant = Box::new(grant);
                let Some(slot) = SubjectSlot::take(&subjects, grant.subject) else {
                    let why = format!("at most {} connections per token subject", subjects.max());
                    return Err(("too_many_connections", why));
                };
                grant.hold(slot);
                extra.token.insert(Authorized {
                    grant,
                    timer_at: u64::MAX,
                })
            }
        };
        if at < token.timer_at {
            token.timer_at = at;
            self.timers.schedule(at, key, gen, TimerKind::Token);
        }
        let revoked: Vec<String> = (channels.iter().map(|s| &s.channel))
            .chain(extra.waiting.iter().map(|(c, _)| c))
            .filter(|c| !token.grant.allows(c))
            .map(|c| c.to_string())
            .collect();
        self.push_control(key, authorized_frame(exp));
        for channel in revoked {
            if self.ws_unsubscribe(key, channel.clone()).is_ok() {
                self.push_control(key, revoked_frame(&channel));
            }
        }
        Ok(())
    }
}
