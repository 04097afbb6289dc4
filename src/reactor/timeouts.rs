//! What a due timer does: a request that did not arrive in time (408, or
//! a quiet close of an idle keep-alive), a parked request Redis did not
//! answer, SSE and WebSocket heartbeats, the linger of a closing
//! connection, the end of an SSE batch window, and the expiry of a
//! stream's subscription token. An entry whose
//! connection is gone, or whose deadline moved, does nothing or re-arms.

use bytes::Bytes;

use super::timer::{Entry, TimerKind};
use super::{Closed, Worker};
use crate::conn::{ConnState, Flag};
use crate::metrics::WorkerStats;
use crate::proto::http::HttpError;
use crate::proto::sse;

impl Worker {
    pub(super) fn run_timers(&mut self, now: u64) {
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.expire(now, &mut fired);
        for entry in fired.drain(..) {
            self.on_timer(entry, now);
        }
        self.fired = fired;
    }

    fn on_timer(&mut self, entry: Entry, now: u64) {
        let (key, gen) = (entry.key(), entry.gen);
        let Some(conn) = self.conns.get(key).filter(|c| c.gen == gen) else {
            return;
        };
        match (entry.kind, &conn.state) {
            (TimerKind::Request, ConnState::Request(_)) => self.request_due(key, now),
            (TimerKind::Heartbeat, ConnState::Sse(_)) => self.sse_heartbeat(key, gen, now),
            (TimerKind::Heartbeat, ConnState::Ws(_)) => self.ws_heartbeat(key, gen, now, false),
            (TimerKind::Ping, ConnState::Ws(_)) => self.ws_heartbeat(key, gen, now, true),
            (TimerKind::Linger, ConnState::Closing { .. }) => self.close(key, Closed::Timeout),
            (TimerKind::Batch, ConnState::Sse(_)) => self.mark_dirty(key, gen),
            (TimerKind::Write, _) => self.write_due(key, gen, now),
            (TimerKind::Token, ConnState::Sse(_) | ConnState::Ws(_)) => self.token_due(key, now),
            _ => {}
        }
    }

    /// Makes sure the request timer fires by the connection's deadline,
    /// keeping one live entry: a new one only when the deadline is earlier
    /// than the live one (which then finds nothing to do).
    pub(super) fn arm_request(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let ConnState::Request(req) = &mut conn.state else {
            return;
        };
        let at = req.deadline_ms;
        if req.timer_at.is_some_and(|live| live <= at) {
            return;
        }
        req.timer_at = Some(at);
        self.timers.schedule(at, key, conn.gen, TimerKind::Request);
    }

    /// A request that became a stream takes its live request timer out of
    /// the wheel: an idle stream should not hold a dead entry until it
    /// would have fired (up to the keep-alive timeout).
    pub(super) fn cancel_request_timer(&mut self, key: usize, gen: u32, old: &ConnState) {
        if let ConnState::Request(req) = old {
            if let Some(at) = req.timer_at {
                self.timers.cancel(at, key, gen, TimerKind::Request);
            }
        }
    }

    /// The request timer: ignored unless it is the live one; then end the
    /// wait if the deadline passed, else arm for the deadline.
    fn request_due(&mut self, key: usize, now: u64) {
        let Some(ConnState::Request(req)) = self.conns.get_mut(key).map(|c| &mut c.state) else {
            return;
        };
        if req.timer_at.is_none_or(|live| now < live) {
            return;
        }
        req.timer_at = None;
        if now < req.deadline_ms {
            self.arm_request(key);
        } else if req.parked {
            self.parked_timeout(key, now);
        } else if req.buf.is_empty() && req.served > 0 {
            // An idle keep-alive connection: just close it.
            self.close(key, Closed::Timeout);
        } else {
            let err = HttpError::new(408, "request_timeout", "the request did not arrive in time");
            self.reject(key, &err, now);
        }
    }

    /// Every heartbeat period, `: ping` unless bytes are queued anyway.
    /// The entry that fired is the stream's only heartbeat entry (armed
    /// at its start, re-armed here), so the next one counts from now.
    fn sse_heartbeat(&mut self, key: usize, gen: u32, now: u64) {
        let heartbeat = self.shared.config.sse.heartbeat_ms;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let ConnState::Sse(sse) = &mut conn.state else {
            return;
        };
        let ping = match (conn.queue.is_empty(), sse.is_gzip()) {
            // A plain stream's ping is the static bytes, written at once
            // when nothing is queued: no allocation at all.
            (true, false) => Some(Bytes::from_static(sse::PING)),
            (true, true) => Some(sse.control(sse::PING)),
            (false, _) => None,
        };
        self.timers
            .schedule(now + heartbeat, key, gen, TimerKind::Heartbeat);
        if let Some(ping) = ping {
            self.send_heartbeat(key, ping);
        }
    }

    /// Arms the write deadline of a connection whose writes just stalled.
    pub(super) fn arm_write(&mut self, key: usize, now: u64) {
        let timeout = self.shared.config.limits.write_timeout_ms;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Some(stalled_for) = conn.queue.stalled_since().since(now) else {
            return;
        };
        if conn.flags.has(Flag::WriteArmed) {
            return;
        }
        conn.flags.set(Flag::WriteArmed, true);
        let at = now + timeout.saturating_sub(stalled_for);
        self.timers.schedule(at, key, conn.gen, TimerKind::Write);
    }

    /// The write deadline: close a connection whose queued bytes made no
    /// progress for `limits.write_timeout_ms`; re-arm if they moved since.
    fn write_due(&mut self, key: usize, gen: u32, now: u64) {
        let timeout = self.shared.config.limits.write_timeout_ms;
        let Some(conn) = self.conns.get_mut(key).filter(|c| c.gen == gen) else {
            return;
        };
        conn.flags.set(Flag::WriteArmed, false);
        let Some(stalled_for) = conn.queue.stalled_since().since(now) else {
            return;
        };
        if stalled_for < timeout {
            return self.arm_write(key, now);
        }
        let (peer, queued) = (conn.peer, conn.queue.len_bytes());
        WorkerStats::add(&self.stats().write_timeouts, 1);
        log::info!(
            "reactor {}: {peer} read nothing for {timeout} ms ({queued} bytes queued); closing",
            self.id
        );
        self.close(key, Closed::Timeout);
    }
}
