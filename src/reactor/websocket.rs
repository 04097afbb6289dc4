//! What a reactor does with a WebSocket connection: the upgrade, reading
//! frames into messages, the JSON protocol, heartbeats and close codes.
//!
//! Replies (pongs, acks, errors, close frames) are control frames: they are
//! never dropped, but a client that makes them pile up without reading is
//! closed once the queue passes its control budget.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use super::timer::TimerKind;
use super::{Closed, Worker};
use crate::api::Upgrade;
use crate::conn::io::{self, IoStatus};
use crate::conn::{ConnState, Delivery, SlotKind, Sub, Ws};
use crate::hub::{check_channel, ids, NotReady, Waiter};
use crate::metrics::WorkerStats;
use crate::proto::ws::{self, close_code, Message, OpCode, Reassembler};

/// Bytes read from a WebSocket per read call batch before decoding.
const READ_CAP: usize = 64 * 1024;
/// Close code for a slow consumer; the reason is the id to resume from.
pub const CLOSE_SLOW: u16 = 4008;

#[derive(Deserialize)]
struct Command {
    #[serde(rename = "type")]
    kind: String,
    channel: Option<String>,
    symbol: Option<String>,
    /// Resume point: replay the channel's events after this id.
    since: Option<String>,
}

/// A command's error: code and message.
type CommandError = (&'static str, String);

/// The `since` of a subscribe: an event id redix gave out.
fn parse_since(since: Option<&str>) -> Result<Option<u64>, CommandError> {
    match since.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => ids::parse(v).map(Some).ok_or_else(|| {
            (
                "bad_cursor",
                format!("since {v:?} is not an event id redix gave out"),
            )
        }),
    }
}

/// Longest market symbol (`BINANCE:BTCUSDT` and the like).
const MAX_SYMBOL_LEN: usize = 32;

fn json_frame(value: serde_json::Value) -> Bytes {
    Bytes::from(ws::text(&value.to_string()))
}

fn error_frame(code: &str, message: &str) -> Bytes {
    json_frame(serde_json::json!({ "type": "error", "code": code, "message": message }))
}

/// Events of `channel` were lost before they reached this client.
pub(super) fn reset_frame(channel: &str) -> Bytes {
    json_frame(serde_json::json!({"type": "reset", "channel": channel}))
}

/// The channel a subscribe/unsubscribe command names.
fn target_channel(cmd: &Command) -> Result<String, String> {
    match (&cmd.channel, &cmd.symbol) {
        (Some(ch), None) => check_channel(ch).map(|_| ch.clone()),
        (None, Some(sym)) => {
            let ok = |c: char| c.is_ascii_alphanumeric() || ".:-_".contains(c);
            if sym.is_empty() || sym.len() > MAX_SYMBOL_LEN || !sym.chars().all(ok) {
                return Err(format!(
                    "symbols are 1 to {MAX_SYMBOL_LEN} of A-Z a-z 0-9 . : - _"
                ));
            }
            Ok(format!("trades:{sym}"))
        }
        _ => Err("name exactly one of \"channel\" or \"symbol\"".into()),
    }
}

impl Worker {
    /// Sends the 101 and turns the connection into a WebSocket; `early`
    /// holds bytes the client sent right after its request.
    pub(super) fn start_ws(&mut self, key: usize, up: Upgrade, early: Vec<u8>, now: u64) {
        let cfg = &self.shared.config.ws;
        let (ping_ms, max_message) = (cfg.ping_ms, cfg.max_message_bytes);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let gen = conn.gen;
        conn.ip_slot = Some((SlotKind::Ws, up.ip_slot));
        conn.queue.push_control(Bytes::from(up.response));
        let ws = Ws {
            channels: Vec::new(),
            waiting: Vec::new(),
            delivery: Delivery::default(),
            rx: Reassembler::new(max_message, up.deflate),
            rbuf: early,
            echo: up.echo,
            batch: up.batch,
            last_seen_ms: now,
            next_ping_ms: now + ping_ms,
        };
        let old = std::mem::replace(&mut conn.state, ConnState::Ws(Box::new(ws)));
        let stats = &self.shared.stats[self.id];
        WorkerStats::sub(super::dispatch::gauge(stats, &old), 1);
        WorkerStats::add(&stats.conns_ws, 1);
        self.timers
            .schedule(now + ping_ms, key, gen, TimerKind::Heartbeat);
        self.mark_dirty(key, gen);
        self.decode_ws(key, now);
    }

    /// Reads until the socket would block, decoding as it goes.
    pub(super) fn read_ws(&mut self, key: usize, now: u64) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let ConnState::Ws(ws) = &mut conn.state else {
                return;
            };
            let before = ws.rbuf.len();
            let status = io::read_into(&mut conn.stream, &mut ws.rbuf, READ_CAP);
            if ws.rbuf.len() > before {
                ws.last_seen_ms = now;
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
        let mut buf = std::mem::take(&mut ws.rbuf);
        let mut off = 0;
        let failure = loop {
            let Some(ConnState::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.state) else {
                break None;
            };
            match ws.rx.decode(&mut buf[off..]) {
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
            if !buf.is_empty() {
                ws.rbuf = buf;
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
                true => ws::compressed_text(&text),
                false => ws::text(&text),
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
        let reply = match serde_json::from_str::<Command>(text) {
            Err(e) => Err(("bad_json", e.to_string())),
            Ok(cmd) => match cmd.kind.as_str() {
                "ping" => Ok(Some(json_frame(serde_json::json!({"type": "pong"})))),
                "subscribe" => target_channel(&cmd)
                    .map_err(|m| ("bad_request", m))
                    .and_then(|ch| Ok((ch, parse_since(cmd.since.as_deref())?)))
                    .and_then(|(ch, since)| self.ws_subscribe(key, ch, since))
                    .map(|()| None),
                "unsubscribe" => target_channel(&cmd)
                    .map_err(|m| ("bad_request", m))
                    .and_then(|ch| self.ws_unsubscribe(key, ch))
                    .map(Some),
                other => Err(("unknown_type", format!("unknown message type {other:?}"))),
            },
        };
        reply.unwrap_or_else(|(code, message)| {
            WorkerStats::add(&self.stats().ws_command_errors, 1);
            Some(error_frame(code, &message))
        })
    }

    fn ws_unsubscribe(&mut self, key: usize, channel: String) -> Result<Bytes, CommandError> {
        let Some(ConnState::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.state) else {
            return Err(("closing", "connection is closing".into()));
        };
        if let Some(pos) = ws.waiting.iter().position(|(c, _)| **c == *channel) {
            let (ch, _) = ws.waiting.swap_remove(pos);
            let gen = self.conns.get(key).map_or(0, |c| c.gen);
            let waiter = Waiter {
                reactor: self.id,
                key,
                gen,
            };
            self.shared.hub.cancel_wait(&[ch], waiter);
            return Ok(json_frame(
                serde_json::json!({"type": "unsubscribed", "channel": channel}),
            ));
        }
        let Some(pos) = ws.channels.iter().position(|s| *s.channel == *channel) else {
            return Err(("not_subscribed", format!("not subscribed to {channel}")));
        };
        let sub = ws.channels.swap_remove(pos);
        self.unsubscribe(key, std::slice::from_ref(&sub));
        Ok(json_frame(
            serde_json::json!({"type": "unsubscribed", "channel": channel}),
        ))
    }

    /// Subscribes and queues, in order: the ack, a reset when the history
    /// no longer reaches back to `since`, the replay, then live events.
    fn ws_subscribe(
        &mut self,
        key: usize,
        channel: String,
        since: Option<u64>,
    ) -> Result<(), CommandError> {
        let max = self.shared.config.ws.max_subscriptions;
        let deflate_min = self.shared.config.ws.deflate_min_bytes;
        let Some(conn) = self.conns.get(key) else {
            return Err(("closing", "connection is closing".into()));
        };
        let ConnState::Ws(ws) = &conn.state else {
            return Err(("closing", "connection is closing".into()));
        };
        let waiter = Waiter {
            reactor: self.id,
            key,
            gen: conn.gen,
        };
        if ws.waiting.iter().any(|(c, _)| **c == *channel) {
            // Acknowledged once it has loaded.
            return Ok(());
        }
        let ack = json_frame(serde_json::json!({"type": "subscribed", "channel": channel}));
        let (already, full) = (
            ws.channels.iter().any(|s| *s.channel == *channel),
            ws.channels.len() + ws.waiting.len() >= max,
        );
        if !already && full {
            return Err((
                "too_many_subscriptions",
                format!("at most {max} subscriptions per connection"),
            ));
        }
        let ch: Arc<str> = Arc::from(channel.as_str());
        let snap = match already {
            true => Default::default(),
            false => {
                match self
                    .shared
                    .hub
                    .subscribe(self.id, std::slice::from_ref(&ch), since, waiter)
                {
                    Ok(snap) => snap,
                    Err(NotReady::Loading) => {
                        if let Some(ConnState::Ws(ws)) =
                            self.conns.get_mut(key).map(|c| &mut c.state)
                        {
                            ws.waiting.push((ch, since));
                        }
                        return Ok(());
                    }
                    Err(NotReady::Unavailable) => {
                        return Err((
                            "unavailable",
                            format!("{channel}: Redis is unreachable; subscribe again shortly"),
                        ))
                    }
                    Err(NotReady::Full) => {
                        return Err((
                            "busy",
                            format!(
                                "{channel}: too many channels are loading; subscribe again shortly"
                            ),
                        ))
                    }
                }
            }
        };
        let compressions = &self.shared.hub.stats.ws_compressions;
        let Some(conn) = self.conns.get_mut(key) else {
            return Ok(());
        };
        let gen = conn.gen;
        let ConnState::Ws(ws) = &mut conn.state else {
            return Ok(());
        };
        conn.queue.push_control(ack);
        if !already {
            for reset in &snap.resets {
                conn.queue.push_control(reset_frame(reset));
            }
            let deflate = ws.deflate();
            for ev in &snap.replay {
                conn.queue
                    .push_replay(ev.ws_frame(deflate, deflate_min, compressions), ev.id);
                ws.delivery.last_queued = Some(ev.id);
            }
            let live_from = snap.live_from.first().copied().unwrap_or(0);
            ws.delivery.live_from_max = ws.delivery.live_from_max.max(live_from);
            ws.channels.push(Sub {
                channel: ch.clone(),
                live_from,
            });
            self.index(key, ch);
        }
        self.mark_dirty(key, gen);
        Ok(())
    }

    /// Channels this WebSocket waited for have loaded (or cannot): try its
    /// waiting subscriptions again, in the order they were asked.
    pub(super) fn ws_retry(&mut self, key: usize) {
        let Some(ConnState::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.state) else {
            return;
        };
        let waiting = std::mem::take(&mut ws.waiting);
        for (ch, since) in waiting {
            if let Err((code, message)) = self.ws_subscribe(key, ch.to_string(), since) {
                WorkerStats::add(&self.stats().ws_command_errors, 1);
                let Some(conn) = self.conns.get_mut(key) else {
                    return;
                };
                conn.queue.push_control(error_frame(code, &message));
                let gen = conn.gen;
                self.mark_dirty(key, gen);
            }
        }
    }

    /// Heartbeat timer: close a silent client, else ping on schedule.
    pub(super) fn ws_heartbeat(&mut self, key: usize, gen: u32, now: u64) {
        let cfg = &self.shared.config.ws;
        let (ping_ms, idle_ms) = (cfg.ping_ms, cfg.idle_timeout_ms);
        let Some(ConnState::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.state) else {
            return;
        };
        let idle_deadline = ws.last_seen_ms + idle_ms;
        if now >= idle_deadline {
            return self.close_ws(key, close_code::GOING_AWAY, "idle timeout", now);
        }
        let mut ping = false;
        if now >= ws.next_ping_ms {
            ws.next_ping_ms = now + ping_ms;
            ping = true;
        }
        let at = ws.next_ping_ms.min(idle_deadline);
        let waiting = !ws.waiting.is_empty();
        self.timers.schedule(at, key, gen, TimerKind::Heartbeat);
        if waiting {
            // In case a wake-up was lost to a full inbox.
            self.ws_retry(key);
        }
        if ping {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.queue.push_control(Bytes::from(ws::ping(b"")));
                self.mark_dirty(key, gen);
            }
        }
    }

    /// Starts the closing handshake with `code`; pending data is dropped.
    pub(super) fn close_ws(&mut self, key: usize, code: u16, reason: &str, now: u64) {
        let frame = Bytes::from(ws::close_frame(code, reason));
        self.close_gracefully(key, Some(frame), true, now);
    }
}
