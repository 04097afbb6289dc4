//! Fan-out and flush: a live event (or a reset) is queued on every local
//! subscriber of its channel as the same shared bytes; overflow drops data
//! for that connection only and counts a warning, and a connection out of
//! warnings is ended with the id to resume from. Once per turn, every
//! connection that got bytes is written with vectored writes, up to a
//! budget, so one busy client cannot hold up the rest.

use std::sync::Arc;

use bytes::Bytes;

use super::{event_bytes, reset_bytes, Closed, Encoding, Fanout, Worker};
use crate::api::ws as ws_api;
use crate::conn::io::IoStatus;
use crate::conn::{ConnState, Flag, Stamp};
use crate::event::Event;
use crate::hub::MARKET_PREFIX;
use crate::metrics::WorkerStats;
use crate::proto::sse;
use crate::proto::ws::close_code;

/// An SSE stream of one job's channel ends with the job (`done` or
/// `error`): the client has all there is.
pub(super) fn ends_with_job(state: &ConnState) -> bool {
    matches!(state, ConnState::Sse(sse) if sse.channels.len() == 1)
}

/// Bytes one connection may write per reactor turn, so a big replay or
/// burst to one client does not hold up every other connection.
const FLUSH_BUDGET: usize = 256 * 1024;

/// A connection whose queue drains empty after no write for this long
/// (or ever), or after a flush of control frames only (a response, an
/// acknowledgement, a ping), gives its queue's memory back: idle
/// connections hold none, while one that data events reach more often
/// keeps its ring, so steady delivery allocates nothing.
const RELEASE_AFTER_MS: u64 = 1_000;

impl Worker {
    /// Queues one event on every local subscriber of its channel.
    pub(super) fn deliver(&mut self, ev: &Arc<Event>) {
        let Some(subs) = self.topics.get(&*ev.channel) else {
            return;
        };
        let max_warnings = self.shared.config.queue.slow_warnings;
        let conflate = self.shared.config.queue.conflate_trades
            && self.shared.market.is_some()
            && ev.channel.starts_with(MARKET_PREFIX);
        let enc = Encoding::of(&self.shared);
        let mut books = Fanout {
            dirty: &mut self.dirty,
            stats: &self.shared.stats[self.id],
            too_slow: Vec::new(),
        };
        let mut batch_wanted = false;
        let mut ended = Vec::new();
        for key in subs.iter() {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if !conn.state.wants(ev.id, &ev.channel) {
                continue;
            }
            if matches!(&conn.state, ConnState::Ws(ws) if ws.batch) {
                batch_wanted = true;
                continue;
            }
            let Some(bytes) = event_bytes(&mut conn.state, ev, &enc) else {
                continue;
            };
            // A gzip stream's trailer covers every byte queued: no
            // replacing there.
            let gzip = matches!(&conn.state, ConnState::Sse(sse) if sse.is_gzip());
            let outcome = match conflate && !gzip {
                true => conn.enqueue_conflated(bytes, ev.id, &ev.channel, self.limits),
                false => conn.enqueue_event(bytes, ev.id, self.limits, max_warnings),
            };
            if !books.settle(outcome, key, conn) {
                conn.state.missed(ev);
                continue;
            }
            conn.state.sent(ev);
            if ev.ends_job && ends_with_job(&conn.state) {
                ended.push(key);
            }
        }
        let too_slow = books.too_slow;
        let now = self.now_ms();
        for key in ended {
            self.close_gracefully(key, None, false, now);
        }
        if batch_wanted {
            self.add_to_batch(ev, now);
        }
        self.disconnect_all_slow(too_slow, now);
    }

    /// Tells every local subscriber of `channel` that events were lost
    /// upstream (`event: reset`, or a WebSocket `{"type":"reset"}`).
    pub(super) fn deliver_reset(&mut self, channel: &Arc<str>) {
        let Some(subs) = self.topics.get(channel) else {
            return;
        };
        let mut touched = Vec::new();
        for key in subs.iter() {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if let Some(bytes) = reset_bytes(&mut conn.state, channel) {
                conn.queue.push_control(bytes);
                touched.push((key, conn.gen));
            }
        }
        for (key, gen) in touched {
            self.mark_dirty(key, gen);
        }
    }

    /// Tells every local subscriber of `channel` its upstream failed: a
    /// WebSocket `{"type":"error","code","message","channel"}`, SSE
    /// `event: error`.
    pub(super) fn deliver_error(&mut self, channel: &Arc<str>, code: &str, message: &str) {
        let Some(subs) = self.topics.get(channel) else {
            return;
        };
        let ws = ws_api::channel_error_frame(channel, code, message);
        let mut touched = Vec::new();
        for key in subs.iter() {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            let bytes = match &mut conn.state {
                ConnState::Sse(sse) => sse.control(&sse::error(channel, code, message)),
                ConnState::Ws(_) => ws.clone(),
                ConnState::Request(_) | ConnState::Closing { .. } => continue,
            };
            conn.queue.push_control(bytes);
            touched.push((key, conn.gen));
        }
        for (key, gen) in touched {
            self.mark_dirty(key, gen);
        }
    }

    pub(super) fn disconnect_all_slow(&mut self, keys: Vec<usize>, now: u64) {
        for key in keys {
            self.disconnect_slow(key, now);
        }
    }

    /// Ends a stream that kept overflowing: the data not yet started is
    /// dropped and `event: slow` (WebSocket: close 4008) carries the id to
    /// resume from.
    fn disconnect_slow(&mut self, key: usize, now: u64) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let in_progress = conn.queue.in_progress_id();
        let Some(delivery) = conn.state.delivery_mut() else {
            return;
        };
        let resume = delivery.resume_id(in_progress);
        let composite = match &conn.state {
            ConnState::Sse(sse) => sse.composite_text(),
            _ => None,
        };
        let (is_ws, peer) = (matches!(conn.state, ConnState::Ws(_)), conn.peer);
        let queued = conn.queue.len_bytes();
        WorkerStats::add(&self.stats().slow_disconnects, 1);
        log::info!(
            "reactor {}: disconnecting slow consumer {peer} (resume from {resume:?}, {queued} bytes queued)",
            self.id,
        );
        let resume = composite.or_else(|| resume.map(|id| self.shared.hub.show_id(id)));
        if is_ws {
            let reason = resume.unwrap_or_default();
            return self.close_ws(key, close_code::SLOW, &reason, now);
        }
        let Some(ConnState::Sse(sse)) = self.conns.get_mut(key).map(|c| &mut c.state) else {
            return;
        };
        // A gzip trailer covers every byte queued, so a gzip stream keeps
        // its queue and sends `slow` after it; so does a composite-cursor
        // stream, whose cursor counts every event queued (and holds a
        // channel with a gap where it was).
        let keep_queue = sse.is_gzip() || sse.is_composite();
        let last = sse.last(&sse::slow(resume.as_deref()));
        self.close_gracefully(key, Some(last), !keep_queue, now);
    }

    /// Writes every connection that got bytes this turn, except open
    /// streams while coalescing holds them (they stay dirty).
    pub(super) fn flush_dirty(&mut self, now: u64) {
        let hold = self.holding_streams(now);
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut held = 0;
        for i in 0..dirty.len() {
            let (key, gen) = dirty[i];
            if hold && self.is_held_stream(key) {
                dirty[held] = (key, gen);
                held += 1;
                continue;
            }
            self.flush_one(key, gen, now);
        }
        dirty.truncate(held);
        // Those whose budget ran out go again next turn; keep the larger
        // allocation for the next turn.
        dirty.append(&mut self.dirty);
        self.coalesce.only_held = held == dirty.len();
        self.dirty = dirty;
    }

    fn flush_one(&mut self, key: usize, gen: u32, now: u64) {
        let Some(conn) = self.conns.get_mut(key).filter(|c| c.gen == gen) else {
            return;
        };
        conn.flags.set(Flag::Dirty, false);
        let closing = matches!(conn.state, ConnState::Closing { .. });
        if conn.flags.has(Flag::Blocked)
            || conn.queue.is_empty() && !closing
            || self.hold_sse(key, now)
        {
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let cold = conn
            .last_write
            .since(now)
            .is_none_or(|ms| ms >= RELEASE_AFTER_MS);
        let done = conn.flush(FLUSH_BUDGET);
        if cold || done.events == 0 {
            conn.queue.release();
            if conn.queue.is_empty() {
                conn.state.release_buffers();
            }
        }
        // The write deadline counts from the last write that moved bytes
        // and then blocked; a write that does not block ends the stall.
        if done.bytes > 0 {
            conn.last_write = Stamp::at(now);
        }
        let stalled = done.status == IoStatus::WouldBlock;
        conn.queue.note_stall(stalled, done.bytes > 0, now);
        let reply_cap = self.shared.config.queue.max_bytes;
        let resume = match &mut conn.state {
            ConnState::Request(req) if req.paused && conn.queue.len_bytes() < reply_cap => {
                req.paused = false;
                true
            }
            _ => false,
        };
        let stats = &self.shared.stats[self.id];
        WorkerStats::add(&stats.bytes_written, done.bytes as u64);
        WorkerStats::add(&stats.events_written, done.events as u64);
        WorkerStats::add(&stats.write_calls, done.calls as u64);
        if resume {
            self.read_again(key);
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match done.status {
            IoStatus::Closed | IoStatus::Reset => self.close(key, Closed::PeerReset),
            IoStatus::Error(_) => self.close(key, Closed::Error),
            IoStatus::WouldBlock if stalled => self.arm_write(key, now),
            IoStatus::WouldBlock => {}
            // Budget spent with bytes left: the rest goes next turn.
            IoStatus::Progress(_) if !conn.queue.is_empty() => {
                conn.flags.set(Flag::Dirty, true);
                self.dirty.push((key, gen));
            }
            IoStatus::Progress(_) => {
                conn.shut_when_drained();
            }
        }
    }

    /// A heartbeat (SSE `: ping`, a WebSocket ping) to a connection with
    /// nothing queued is written at once when the socket takes it whole,
    /// so an idle connection's heartbeat allocates no queue ring. Else (bytes
    /// queued, a blocked socket, a partial write, an error the next flush
    /// reports) what is left is queued as a control frame.
    pub(super) fn send_heartbeat(&mut self, key: usize, bytes: Bytes) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let written = match conn.queue.is_empty() && !conn.flags.has(Flag::Blocked) {
            true => conn.write_now(&bytes),
            false => 0,
        };
        if written > 0 {
            let stats = &self.shared.stats[self.id];
            WorkerStats::add(&stats.bytes_written, written as u64);
            WorkerStats::add(&stats.write_calls, 1);
        }
        if written < bytes.len() {
            self.push_control(key, bytes.slice(written..));
        }
    }

    /// Queues a control frame (never dropped) and marks the connection for
    /// this turn's flush.
    pub(super) fn push_control(&mut self, key: usize, bytes: Bytes) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let gen = conn.gen;
        conn.queue.push_control(bytes);
        self.mark_dirty(key, gen);
    }
}
