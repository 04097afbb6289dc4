//! What a reactor does with a WebSocket connection: the upgrade, reading
//! frames into messages, the JSON protocol, heartbeats and close codes.
//!
//! Replies (pongs, acks, errors, close frames) are control frames: they are
//! never dropped, but a client that makes them pile up without reading is
//! closed once the queue passes its control budget.

use std::sync::Arc;

use super::timer::TimerKind;
use super::topics::shared_name;
use super::{release_slot, Closed, Worker, READ_BUDGET};
use crate::api::ws::{
    error_frame, parse, pong_frame, subscribed_frame, unsubscribed_frame, CommandError, WsRequest,
};
use crate::api::Upgrade;
use crate::conn::io::{self, IoStatus};
use crate::conn::{ConnState, Delivery, Phase, SlotKind, Stamp, Sub, Subs, Ws};
use crate::hub::ids::Format;
use crate::hub::NotReady;
use crate::limits::Bucket;
use crate::metrics::WorkerStats;
use crate::proto::ws::{self, close_code, Message, OpCode};
use bytes::Bytes;

/// Bytes read from a WebSocket per read call batch before decoding.
const READ_CAP: usize = 64 * 1024;

impl Worker {
    /// Sends the 101 and turns the connection into a WebSocket; `early`
    /// holds bytes the client sent right after its request.
    pub(super) fn start_ws(&mut self, key: usize, up: Upgrade, early: Vec<u8>, now: u64) {
        let cfg = &self.shared.config.ws;
        let (ping_ms, max_message) = (cfg.ping_ms, cfg.max_message_bytes);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let (gen, first_ping) = (conn.gen, next_ping(conn.opened, now, ping_ms));
        let http_slot = conn.ip_slot.replace((SlotKind::Ws, up.ip_slot));
        release_slot(&self.shared.access, http_slot);
        conn.queue.push_control(Bytes::from(up.response));
        let ws = Ws {
            channels: Subs::default(),
            delivery: Delivery::default(),
            rx: None,
            agreement: up.deflate,
            echo: up.echo,
            batch: up.batch,
            last_seen: Stamp::at(now),
            commands: Bucket::default(),
            extra: None,
        };
        let mut ws = Box::new(ws);
        if !early.is_empty() {
            ws.receiving(max_message).rbuf = early;
        }
        let old = std::mem::replace(&mut conn.state, ConnState::Ws(ws));
        self.moved(old.phase(), Phase::Ws);
        self.cancel_request_timer(key, gen, &old);
        self.timers.schedule(first_ping, key, gen, TimerKind::Ping);
        self.install_token(key, up.grant, now);
        self.mark_dirty(key, gen);
        self.decode_ws(key, now);
    }

    /// Reads until the socket would block or the turn's read budget is
    /// spent (then again next turn), decoding as it goes.
    pub(super) fn read_ws(&mut self, key: usize, now: u64) {
        let mut budget = READ_BUDGET;
        let max_message = self.shared.config.ws.max_message_bytes;
        loop {
            if budget == 0 {
                return self.read_again(key);
            }
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let ConnState::Ws(ws) = &mut conn.state else {
                return;
            };
            let rbuf = &mut ws.receiving(max_message).rbuf;
            let before = rbuf.len();
            let cap = READ_CAP.min(before + budget);
            let status = io::read_into(&mut conn.stream, rbuf, cap);
            let got = rbuf.len() - before;
            budget -= got;
            if got > 0 {
                ws.last_seen = Stamp::at(now);
            }
            self.decode_ws(key, now);
            let still_ws = matches!(
                self.conns.get(key).map(|c| &c.state),
                Some(ConnState::Ws(_))
            );
            match status {
                IoStatus::Progress(_) if still_ws => continue,
                IoStatus::Progress(_) | IoStatus::WouldBlock => return,
                IoStatus::Closed if still_ws => return self.close(key, Closed::Normal),
                IoStatus::Closed => return,
                IoStatus::Reset => return self.close(key, Closed::PeerReset),
                IoStatus::Error(_) => return self.close(key, Closed::Error),
            }
        }
    }

    /// Decodes buffered bytes into messages and handles them.
    fn decode_ws(&mut self, key: usize, now: u64) {
        let Some(ConnState::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.state) else {
            return;
        };
        let Some(r) = ws.rx.as_mut() else {
            return;
        };
        let mut buf = std::mem::take(&mut r.rbuf);
        let mut off = 0;
        let failure = loop {
            let Some(ConnState::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.state) else {
                break None;
            };
            let Some(r) = ws.rx.as_mut() else {
                break None;
            };
            match r.rx.decode(&mut buf[off..]) {
                Err(e) => break Some(e),
                Ok((0, None)) => break None,
                Ok((n, msg)) => {
                    off += n;
                    if let Some(msg) = msg {
                        if !self.on_ws_message(key, msg, now) {
                            break None;
                        }
                    }
                }
            }
        };
        if let Some(ConnState::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.state) {
            buf.drain(..off);
            if let Some(r) = ws.rx.as_mut() {
                if !buf.is_empty() {
                    r.rbuf = buf;
                }
                r.message_since_ms = match r.rx.in_message() {
                    true if r.message_since_ms == 0 => now.max(1),
                    true => r.message_since_ms,
                    false => 0,
                };
                if r.idle() {
                    ws.rx = None;
                }
            }
        }
        if let Some(e) = failure {
            WorkerStats::add(&self.stats().ws_protocol_errors, 1);
            log::debug!(
                "reactor {}: websocket protocol error {}: {}",
                self.id,
                e.code,
                e.reason
            );
            self.close_ws(key, e.code, e.reason, now);
        }
    }

    /// Handles one message; false when the connection stops reading.
    fn on_ws_message(&mut self, key: usize, msg: Message, now: u64) -> bool {
        let Some(ConnState::Ws(ws)) = self.conns.get(key).map(|c| &c.state) else {
            return false;
        };
        let (echo, deflate) = (ws.echo, ws.deflate());
        let reply = match msg {
            Message::Ping(payload) => Bytes::from(ws::pong(&payload)),
            Message::Pong(_) => return true,
            Message::Close(frame) => {
                // Answer the close handshake, echoing the code.
                let reply = match frame {
                    Some(f) => ws::close_frame(f.code, ""),
                    None => ws::encode_frame(OpCode::Close, &[], false),
                };
                self.close_gracefully(key, Some(Bytes::from(reply)), false, now);
                return false;
            }
            Message::Text(text) if echo => Bytes::from(match deflate {
                Some(window) => ws::compressed_text(&text, window),
                None => ws::text(&text),
            }),
            Message::Binary(data) if echo => {
                Bytes::from(ws::encode_frame(OpCode::Binary, &data, false))
            }
            Message::Text(text) => match self.ws_command(key, &text) {
                Some(reply) => reply,
                None => return true,
            },
            Message::Binary(_) => {
                WorkerStats::add(&self.stats().ws_command_errors, 1);
                error_frame(
                    "unsupported",
                    "binary messages are not part of the protocol; send JSON text",
                )
            }
        };
        self.reply(key, reply, now)
    }

    /// Queues a control reply; false (and the connection closed as slow)
    /// when replies pile up past the control budget.
    fn reply(&mut self, key: usize, bytes: Bytes, now: u64) -> bool {
        let budget =
            self.shared.config.queue.max_bytes + self.shared.config.ws.max_message_bytes + 4096;
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let gen = conn.gen;
        conn.queue.push_control(bytes);
        self.mark_dirty(key, gen);
        let Some(conn) = self.conns.get(key) else {
            return false;
        };
        if conn.queue.len_bytes() <= budget {
            return true;
        }
        log::info!(
            "reactor {}: {} does not read its replies; closing",
            self.id,
            conn.peer
        );
        self.close_ws(key, close_code::POLICY, "replies not read", now);
        false
    }

    /// Runs one JSON command; the reply to queue, if any.
    fn ws_command(&mut self, key: usize, text: &str) -> Option<Bytes> {
        let format = Format::of_redis_mode(self.shared.redis.is_some());
        let reply = parse(text, format).and_then(|request| match request {
            WsRequest::Ping => Ok(Some(pong_frame())),
            WsRequest::Subscribe { .. }
            | WsRequest::Unsubscribe { .. }
            | WsRequest::Auth { .. }
                if !self.take_command(key) =>
            {
                Err((
                    "rate_limited",
                    "too many subscribe/unsubscribe commands; slow down".into(),
                ))
            }
            WsRequest::Subscribe { channel, since } => {
                self.ws_subscribe(key, channel, since).map(|()| None)
            }
            WsRequest::Unsubscribe { channel } => self.ws_unsubscribe(key, channel).map(Some),
            WsRequest::Auth { token } => self.ws_auth(key, &token).map(|()| None),
        });
        reply.unwrap_or_else(|(code, message)| {
            WorkerStats::add(&self.stats().ws_command_errors, 1);
            Some(error_frame(code, &message))
        })
    }

    pub(super) fn ws_unsubscribe(
        &mut self,
        key: usize,
        channel: String,
    ) -> Result<Bytes, CommandError> {
        let Some(conn) = self.conns.get_mut(key) else {
            return Err(("closing", "connection is closing".into()));
        };
        let gen = conn.gen;
        let ConnState::Ws(ws) = &mut conn.state else {
            return Err(("closing", "connection is closing".into()));
        };
        if let Some(pos) = ws.waiting().iter().position(|(c, _)| **c == *channel) {
            let (ch, _) = ws.extra_mut().waiting.swap_remove(pos);
            let me = self.conn_ref(key, gen);
            self.shared.hub.cancel_wait(&[ch], me);
            return Ok(unsubscribed_frame(&channel));
        }
        let Some(pos) = ws.channels.iter().position(|s| *s.channel == *channel) else {
            return Err(("not_subscribed", format!("not subscribed to {channel}")));
        };
        let sub = ws.channels.swap_remove(pos);
        self.unsubscribe(key, std::slice::from_ref(&sub));
        Ok(unsubscribed_frame(&channel))
    }

    /// Subscribes and queues, in order: the ack, a reset when the history
    /// no longer reaches back to `since`, the replay, then live events.
    /// In Redis mode a channel still loading is acknowledged once loaded.
    fn ws_subscribe(
        &mut self,
        key: usize,
        channel: String,
        since: Option<u64>,
    ) -> Result<(), CommandError> {
        let max = self.shared.config.ws.max_subscriptions;
        let closing = || ("closing", "connection is closing".to_string());
        let conn = self.conns.get(key).ok_or_else(closing)?;
        let gen = conn.gen;
        let ConnState::Ws(ws) = &conn.state else {
            return Err(closing());
        };
        if ws.waiting().iter().any(|(c, _)| **c == *channel) {
            return Ok(());
        }
        if ws.channels.iter().any(|s| *s.channel == *channel) {
            self.push_control(key, subscribed_frame(&channel));
            return Ok(());
        }
        self.token_allows(key, &channel)?;
        if ws.channels.len() + ws.waiting().len() >= max {
            return Err((
                "too_many_subscriptions",
                format!("at most {max} subscriptions per connection"),
            ));
        }
        let ch = shared_name(&self.topics, &channel).unwrap_or_else(|| Arc::from(channel.as_str()));
        self.charge_new_channel(key, &ch)?;
        let snap = match self.attach(key, gen, std::slice::from_ref(&ch), since) {
            Ok(snap) => snap,
            Err(NotReady::Loading) => {
                if let Some(ConnState::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.state) {
                    ws.extra_mut().waiting.push((ch, since));
                }
                return Ok(());
            }
            Err(NotReady::Unavailable) => {
                let why = format!("{channel}: Redis is unreachable; subscribe again shortly");
                return Err(("unavailable", why));
            }
            Err(NotReady::Full) => {
                let why =
                    format!("{channel}: too many channels are loading; subscribe again shortly");
                return Err(("busy", why));
            }
        };
        self.push_control(key, subscribed_frame(&channel));
        if let Some(ConnState::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.state) {
            let live_from = snap.live_from.first().copied().unwrap_or(0);
            ws.channels.push(Sub {
                channel: ch.clone(),
                live_from,
            });
        }
        self.begin_delivery(key, std::slice::from_ref(&ch), &snap);
        Ok(())
    }

    /// Takes a token of the connection's subscribe rate; false (counted)
    /// when it is spent.
    fn take_command(&mut self, key: usize) -> bool {
        let now = self.now_ms();
        let cfg = &self.shared.config.ws;
        let (rate, burst) = (cfg.subscribes_per_min, cfg.subscribe_burst);
        let Some(ConnState::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.state) else {
            return false;
        };
        if ws.commands.take(now, rate, burst) {
            return true;
        }
        WorkerStats::add(&self.stats().rejected_subscribe_rate, 1);
        false
    }

    /// A channel nobody here listens to costs the client IP's budget of
    /// new channels.
    fn charge_new_channel(&mut self, key: usize, channel: &Arc<str>) -> Result<(), CommandError> {
        let Some(ip) = self
            .conns
            .get(key)
            .and_then(|c| c.ip_slot)
            .map(|(_, ip)| ip)
        else {
            return Ok(());
        };
        let shared = &self.shared;
        let new = shared.hub.unknown(std::slice::from_ref(channel)) as u32;
        let now = shared.now_ms();
        shared.access.new_channels.take(ip, new, now).map_err(|secs| {
            WorkerStats::add(&shared.stats[self.id].rejected_new_channels, 1);
            let why = format!(
                "this client IP subscribes to too many channels nobody listens to; retry in {secs} s"
            );
            ("too_many_new_channels", why)
        })
    }

    /// Channels this WebSocket waited for have loaded (or cannot): try its
    /// waiting subscriptions again, in the order they were asked.
    pub(super) fn ws_retry(&mut self, key: usize) {
        let Some(ConnState::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.state) else {
            return;
        };
        let waiting = ws.take_waiting();
        for (ch, since) in waiting {
            if let Err((code, message)) = self.ws_subscribe(key, ch.to_string(), since) {
                WorkerStats::add(&self.stats().ws_command_errors, 1);
                self.push_control(key, error_frame(code, &message));
            }
        }
    }

    /// `channel`, which this WebSocket waited for, has loaded (or cannot):
    /// try that subscription again. One channel per wake-up, so a client
    /// waiting on many channels costs O(its subscriptions) per load, not
    /// O(waiting) retries each.
    pub(super) fn ws_retry_one(&mut self, key: usize, channel: &Arc<str>) {
        let Some(ConnState::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.state) else {
            return;
        };
        let Some(pos) = ws.waiting().iter().position(|(c, _)| c == channel) else {
            return;
        };
        let (ch, since) = ws.extra_mut().waiting.remove(pos);
        if let Err((code, message)) = self.ws_subscribe(key, ch.to_string(), since) {
            WorkerStats::add(&self.stats().ws_command_errors, 1);
            self.push_control(key, error_frame(code, &message));
        }
    }

    /// Heartbeat timer (`ping`: the one armed for a ping): close a silent
    /// client, else ping when due, and arm the next of the ping and the
    /// idle deadline.
    pub(super) fn ws_heartbeat(&mut self, key: usize, gen: u32, now: u64, ping: bool) {
        let cfg = &self.shared.config.ws;
        let (ping_ms, idle_ms, message_ms) =
            (cfg.ping_ms, cfg.idle_timeout_ms, cfg.message_timeout_ms);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let opened = conn.opened;
        let ConnState::Ws(ws) = &mut conn.state else {
            return;
        };
        let silent_for = ws.last_seen.since(now).unwrap_or(0);
        if silent_for >= idle_ms {
            return self.close_ws(key, close_code::GOING_AWAY, "idle timeout", now);
        }
        // Pings keep a connection alive, not a message that never ends.
        let since = ws.message_since_ms();
        if since != 0 && now >= since + message_ms {
            let reason = "message not completed in time";
            return self.close_ws(key, close_code::POLICY, reason, now);
        }
        let (idle_deadline, next) = (now + idle_ms - silent_for, next_ping(opened, now, ping_ms));
        let waiting = !ws.waiting().is_empty();
        match next <= idle_deadline {
            true => self.timers.schedule(next, key, gen, TimerKind::Ping),
            false => self
                .timers
                .schedule(idle_deadline, key, gen, TimerKind::Heartbeat),
        }
        if waiting {
            // In case a wake-up was lost to a full inbox.
            self.ws_retry(key);
        }
        if ping {
            self.send_heartbeat(key, Bytes::from_static(EMPTY_PING));
        }
    }

    /// Starts the closing handshake with `code`; pending data is dropped.
    pub(super) fn close_ws(&mut self, key: usize, code: u16, reason: &str, now: u64) {
        let frame = Bytes::from(ws::close_frame(code, reason));
        self.close_gracefully(key, Some(frame), true, now);
    }
}

/// A ping frame with no payload (`ws::ping(b"")`), as static bytes: a
/// ping allocates nothing beyond the queue's ring.
const EMPTY_PING: &[u8] = &[0x89, 0x00];

/// The first ping time after `now`: pings go out every `ping_ms` from the
/// connection's accept (a timer late by less than a period still pings
/// once, then keeps the phase).
fn next_ping(opened: Stamp, now: u64, ping_ms: u64) -> u64 {
    let age = opened.since(now).unwrap_or(0);
    now + ping_ms - age % ping_ms.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_ping_is_an_empty_ping_frame() {
        assert_eq!(EMPTY_PING, &ws::ping(b"")[..]);
    }

    #[test]
    fn pings_keep_the_phase_of_the_accept() {
        let opened = Stamp::at(1_000);
        assert_eq!(next_ping(opened, 1_003, 20_000), 21_000);
        assert_eq!(next_ping(opened, 21_000, 20_000), 41_000);
        assert_eq!(next_ping(opened, 21_040, 20_000), 41_000, "a late timer");
    }
}
