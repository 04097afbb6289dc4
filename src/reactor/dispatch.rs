//! What a reactor does with one connection: read and route requests, start
//! streams, fan events out, flush, time out and close.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use mio::event::Event as MioEvent;

use super::timer::TimerKind;
use super::Waiting;
use super::{Closed, Worker};
use crate::api::{self, Action, Ctx, StreamStart};
use crate::conn::io::{self, IoStatus};
use crate::conn::{Conn, ConnState, Delivery, Enqueued, SlotKind, Sse, Sub};
use crate::hub::{Event, NotReady, Waiter};
use crate::metrics::WorkerStats;
use crate::proto::gzip::{self as gz, Trail};
use crate::proto::http::{self, HttpError};
use crate::proto::sse;
use crate::proto::ws::close_code;

use super::websocket::CLOSE_SLOW;

/// Bytes one connection may write per reactor turn, so a big replay or
/// burst to one client does not hold up every other connection.
const FLUSH_BUDGET: usize = 256 * 1024;

/// Books what queueing one data event did; true when it was queued.
pub(super) fn settle(
    outcome: Enqueued,
    key: usize,
    conn: &mut Conn,
    dirty: &mut Vec<(usize, u32)>,
    stats: &WorkerStats,
    too_slow: &mut Vec<usize>,
) -> bool {
    match outcome {
        Enqueued::Queued => {
            if !conn.dirty {
                conn.dirty = true;
                dirty.push((key, conn.gen));
            }
            true
        }
        Enqueued::Dropped => {
            WorkerStats::add(&stats.dropped_queue_full, 1);
            false
        }
        Enqueued::TooSlow => {
            WorkerStats::add(&stats.dropped_queue_full, 1);
            too_slow.push(key);
            false
        }
    }
}

pub(super) fn gauge<'a>(stats: &'a WorkerStats, state: &ConnState) -> &'a AtomicU64 {
    match state {
        ConnState::Request(_) => &stats.conns_http,
        ConnState::Sse(_) => &stats.conns_sse,
        ConnState::Ws(_) => &stats.conns_ws,
        ConnState::Closing { .. } => &stats.conns_closing,
    }
}

impl Worker {
    pub(super) fn on_socket_event(&mut self, key: usize, ev: &MioEvent) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
            conn.blocked = false;
            let gen = conn.gen;
            self.mark_dirty(key, gen);
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.on_readable(key);
        }
    }

    pub(super) fn mark_dirty(&mut self, key: usize, gen: u32) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push((key, gen));
            }
        }
    }

    fn on_readable(&mut self, key: usize) {
        let now = self.now_ms();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match &mut conn.state {
            ConnState::Request(_) => self.read_requests(key, now),
            ConnState::Ws(_) => self.read_ws(key, now),
            ConnState::Sse(_) | ConnState::Closing { .. } => match io::discard(&mut conn.stream) {
                IoStatus::Closed => self.close(key, Closed::Normal),
                IoStatus::Reset => self.close(key, Closed::PeerReset),
                IoStatus::Error(_) => self.close(key, Closed::Error),
                IoStatus::Progress(_) | IoStatus::WouldBlock => {}
            },
        }
    }

    /// Reads until the socket is drained, answering every complete request.
    pub(super) fn read_requests(&mut self, key: usize, now: u64) {
        let limits = &self.shared.config.limits;
        let cap = limits.max_header_bytes + limits.max_body_bytes;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let ConnState::Request(req) = &mut conn.state else {
                return;
            };
            let status = io::read_into(&mut conn.stream, &mut req.buf, cap);
            self.answer_requests(key, now);
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let in_request = matches!(conn.state, ConnState::Request(_));
            let closing = matches!(conn.state, ConnState::Closing { .. });
            let parked = matches!(&conn.state, ConnState::Request(r) if r.parked);
            match status {
                // Waiting for Redis: read on once answered.
                IoStatus::Progress(_) | IoStatus::WouldBlock if parked => return,
                // The buffer filled up: the answers made room, read on.
                IoStatus::Progress(_) if in_request => continue,
                // Upgraded with more bytes waiting: the new state reads
                // them (edge-triggered: nobody would call again).
                IoStatus::Progress(_) if !closing => return self.on_readable(key),
                IoStatus::Progress(_) | IoStatus::WouldBlock => return,
                IoStatus::Closed if in_request && !conn.queue.is_empty() => {
                    // Half-closed after its requests: answer, then close.
                    self.close_gracefully(key, None, false, now);
                    return;
                }
                // A closing connection still gets its last bytes (the
                // linger timer bounds it); a stream whose client left ends.
                IoStatus::Closed if closing => return,
                IoStatus::Closed => return self.close(key, Closed::Normal),
                IoStatus::Reset => return self.close(key, Closed::PeerReset),
                IoStatus::Error(_) => return self.close(key, Closed::Error),
            }
        }
    }

    /// Parses and answers the complete requests at the front of the buffer.
    fn answer_requests(&mut self, key: usize, now: u64) {
        let shared = self.shared.clone();
        let limits = &shared.config.limits;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let gen = conn.gen;
            let ConnState::Request(req) = &mut conn.state else {
                return;
            };
            if req.buf.is_empty() || req.parked {
                return;
            }
            let head =
                match http::parse_head(&req.buf, limits.max_header_bytes, limits.max_body_bytes) {
                    Ok(Some(head)) => head,
                    Ok(None) => return,
                    Err(err) => return self.reject(key, &err, now),
                };
            let total = head.len + head.content_length;
            if req.buf.len() < total {
                return;
            }
            WorkerStats::add(&shared.stats[self.id].requests, 1);
            let ctx = Ctx {
                shared: &shared,
                peer: conn.peer,
                stats: &shared.stats[self.id],
            };
            let action = api::handle(&head, &req.buf[head.len..total], &ctx);
            req.buf.drain(..total);
            if req.buf.is_empty() {
                req.buf = Vec::new();
            }
            req.served += 1;
            req.deadline_ms = now + limits.header_timeout_ms;
            match action {
                Action::Respond { bytes, close } => {
                    conn.queue.push_control(Bytes::from(bytes));
                    self.mark_dirty(key, gen);
                    if close {
                        return self.close_gracefully(key, None, false, now);
                    }
                }
                Action::Stream(start) => return self.start_stream(key, start, now),
                Action::Upgrade(up) => {
                    // Frames the client sent right behind its request.
                    let early = std::mem::take(&mut req.buf);
                    return self.start_ws(key, up, early, now);
                }
                Action::Publish(p) => self.publish_via_redis(key, gen, p, now),
            }
        }
    }

    /// Answers a request that cannot be served, then closes.
    fn reject(&mut self, key: usize, err: &HttpError, now: u64) {
        WorkerStats::add(&self.stats().rejected_bad_request, 1);
        if let Some(conn) = self.conns.get(key) {
            log::debug!(
                "reactor {}: {} from {}: {}",
                self.id,
                err.status,
                conn.peer,
                err.message
            );
        }
        let bytes = Bytes::from(http::error_response(err, false, &[]));
        self.close_gracefully(key, Some(bytes), false, now);
    }

    pub(super) fn start_stream(&mut self, key: usize, start: StreamStart, now: u64) {
        let Some(gen) = self.conns.get(key).map(|c| c.gen) else {
            return self.shared.sse_limiter.release(start.ip_slot);
        };
        let waiter = Waiter {
            reactor: self.id,
            key,
            gen,
        };
        // Attach and read history first: the snapshot and live delivery
        // meet at `live_from` without a gap or a double.
        let hub = &self.shared.hub;
        let snap = match hub.subscribe(self.id, &start.channels, start.cursor, waiter) {
            Ok(snap) => snap,
            Err(NotReady::Loading) => return self.park(key, Waiting::Stream(start), now),
            Err(why) => {
                self.shared.sse_limiter.release(start.ip_slot);
                let message = match why {
                    NotReady::Full => "too many channels are loading from Redis; retry shortly",
                    _ => "Redis is unreachable; retry shortly",
                };
                let bytes = Bytes::from(api::redis_unavailable(message, false));
                return self.close_gracefully(key, Some(bytes), false, now);
            }
        };
        let StreamStart {
            channels,
            ip_slot,
            cursor: _,
            gzip,
            batch,
        } = start;
        let sse_cfg = &self.shared.config.sse;
        let (heartbeat, retry_base, retry_jitter) = (
            sse_cfg.heartbeat_ms,
            sse_cfg.retry_ms,
            sse_cfg.retry_jitter_ms,
        );
        let retry = retry_base + self.jitter(retry_jitter);
        let Some(conn) = self.conns.get_mut(key) else {
            // Gone meanwhile: undo the attach through the normal path.
            self.shared.sse_limiter.release(ip_slot);
            return self.release_channels(&channels);
        };
        conn.ip_slot = Some((SlotKind::Sse, ip_slot));
        let subs = channels
            .iter()
            .zip(&snap.live_from)
            .map(|(c, &live_from)| Sub {
                channel: c.clone(),
                live_from,
            });
        let live_from_max = snap.live_from.iter().copied().max().unwrap_or(0);
        let mut sse = Sse {
            channels: subs.collect(),
            delivery: Delivery {
                live_from_max,
                ..Delivery::default()
            },
            next_ping_ms: now + heartbeat,
            gzip: gzip.then(Trail::default),
            batch,
            hold_until: None,
        };
        let mut head = match gzip {
            true => [sse::HEAD_GZIP.as_bytes(), &gz::HEADER[..]].concat(),
            false => sse::HEAD.as_bytes().to_vec(),
        };
        head.extend_from_slice(&sse.control(&sse::retry(retry)));
        conn.queue.push_control(Bytes::from(head));
        for ch in &snap.resets {
            conn.queue.push_control(sse.control(&sse::reset(ch)));
        }
        let gz_count = &self.shared.hub.stats.sse_gzip_compressions;
        for ev in &snap.replay {
            conn.queue.push_replay(sse.event(ev, gz_count), ev.id);
            sse.sent(ev);
            sse.delivery.last_queued = Some(ev.id);
        }
        let stream = ConnState::Sse(sse);
        let old = std::mem::replace(&mut conn.state, stream);
        let stats = &self.shared.stats[self.id];
        WorkerStats::sub(gauge(stats, &old), 1);
        WorkerStats::add(&stats.conns_sse, 1);
        self.timers
            .schedule(now + heartbeat, key, gen, TimerKind::Heartbeat);
        for ch in channels {
            self.topics.entry(ch).or_default().insert(key);
        }
        self.mark_dirty(key, gen);
    }

    /// Puts `key` in the local index of `channel` (the hub side is done by
    /// `Hub::subscribe`).
    pub(super) fn index(&mut self, key: usize, channel: Arc<str>) {
        self.topics.entry(channel).or_default().insert(key);
    }

    /// Detaches channels that have no local subscriber.
    fn release_channels(&mut self, channels: &[Arc<str>]) {
        for ch in channels {
            if !self.topics.contains_key(ch) {
                self.shared.hub.detach(self.id, ch);
            }
        }
    }

    pub(super) fn unsubscribe(&mut self, key: usize, channels: &[Sub]) {
        for Sub { channel: ch, .. } in channels {
            if let Some(subs) = self.topics.get_mut(ch) {
                subs.remove(&key);
                if subs.is_empty() {
                    self.topics.remove(ch);
                    self.shared.hub.detach(self.id, ch);
                }
            }
        }
    }

    /// Queues one event on every local subscriber of its channel.
    pub(super) fn deliver(&mut self, ev: &Arc<Event>) {
        let Some(subs) = self.topics.get(&*ev.channel) else {
            return;
        };
        let max_warnings = self.shared.config.queue.slow_warnings;
        let deflate_min = self.shared.config.ws.deflate_min_bytes;
        let compressions = &self.shared.hub.stats.ws_compressions;
        let gz_count = &self.shared.hub.stats.sse_gzip_compressions;
        let stats = &self.shared.stats[self.id];
        let mut too_slow = Vec::new();
        let mut batch_wanted = false;
        for &key in subs {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if !conn.state.wants(ev.id, &ev.channel) {
                continue;
            }
            let bytes = match &conn.state {
                ConnState::Ws(ws) if ws.batch => {
                    batch_wanted = true;
                    continue;
                }
                ConnState::Ws(ws) => ev.ws_frame(ws.deflate(), deflate_min, compressions),
                ConnState::Sse(sse) => sse.event(ev, gz_count),
                ConnState::Request(_) | ConnState::Closing { .. } => continue,
            };
            let outcome = conn.enqueue_event(bytes, ev.id, self.limits, max_warnings);
            if settle(outcome, key, conn, &mut self.dirty, stats, &mut too_slow) {
                if let ConnState::Sse(sse) = &mut conn.state {
                    sse.sent(ev);
                }
            }
        }
        let now = self.now_ms();
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
        for &key in subs {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            let bytes = match &mut conn.state {
                ConnState::Sse(sse) => sse.control(&sse::reset(channel)),
                ConnState::Ws(_) => super::websocket::reset_frame(channel),
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
    /// dropped and `event: slow` carries the id to resume from.
    fn disconnect_slow(&mut self, key: usize, now: u64) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let in_progress = conn.queue.in_progress_id();
        let Some(delivery) = conn.state.delivery_mut() else {
            return;
        };
        let resume = delivery.resume_id(in_progress);
        let (is_ws, peer) = (matches!(conn.state, ConnState::Ws(_)), conn.peer);
        let queued = conn.queue.len_bytes();
        WorkerStats::add(&self.stats().slow_disconnects, 1);
        log::info!(
            "reactor {}: disconnecting slow consumer {peer} (resume from {resume:?}, {queued} bytes queued)",
            self.id,
        );
        let resume = resume.map(|id| self.shared.hub.show_id(id));
        if is_ws {
            let reason = resume.unwrap_or_default();
            return self.close_ws(key, CLOSE_SLOW, &reason, now);
        }
        let Some(ConnState::Sse(sse)) = self.conns.get_mut(key).map(|c| &mut c.state) else {
            return;
        };
        // A gzip trailer covers every byte queued, so a gzip stream keeps
        // its queue and sends `slow` after it.
        let keep_queue = sse.gzip.is_some();
        let last = sse.last(&sse::slow(resume.as_deref()));
        self.close_gracefully(key, Some(last), !keep_queue, now);
    }

    /// Sends `last` after what is queued (or instead of pending data), then
    /// shuts the write side; the linger timer bounds how long that may take.
    pub(super) fn close_gracefully(
        &mut self,
        key: usize,
        last: Option<Bytes>,
        drop_pending: bool,
        now: u64,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if matches!(conn.state, ConnState::Closing { .. }) {
            return;
        }
        let gen = conn.gen;
        let old = conn.start_closing(last, drop_pending);
        let stats = &self.shared.stats[self.id];
        WorkerStats::sub(gauge(stats, &old), 1);
        WorkerStats::add(&stats.conns_closing, 1);
        match old {
            ConnState::Sse(sse) => self.unsubscribe(key, &sse.channels),
            ConnState::Ws(ws) => {
                self.unsubscribe(key, &ws.channels);
                self.stop_waiting(key, gen, &ws.waiting);
            }
            ConnState::Request(_) | ConnState::Closing { .. } => {}
        }
        if let Some(parked) = self.parked.remove(&key) {
            self.abandon(key, parked);
        }
        let linger = self.shared.config.shutdown.linger_ms;
        self.timers
            .schedule(now + linger, key, gen, TimerKind::Linger);
        self.mark_dirty(key, gen);
    }

    /// Shutdown: streams get `event: reconnect` with a jittered retry, idle
    /// connections close, requests in flight finish within the drain window.
    pub(super) fn shutdown_conn(&mut self, key: usize, now: u64) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        match &conn.state {
            ConnState::Sse(_) => {
                let sse_cfg = &self.shared.config.sse;
                let (base, jitter) = (sse_cfg.retry_ms, sse_cfg.retry_jitter_ms);
                let retry = base + self.jitter(jitter);
                let Some(ConnState::Sse(sse)) = self.conns.get_mut(key).map(|c| &mut c.state)
                else {
                    return;
                };
                let last = sse.last(&sse::reconnect(retry));
                self.close_gracefully(key, Some(last), false, now);
            }
            ConnState::Ws(_) => self.close_ws(key, close_code::RESTART, "server restart", now),
            ConnState::Request(req) if req.buf.is_empty() && conn.queue.is_empty() => {
                self.close(key, Closed::Shutdown);
            }
            ConnState::Request(_) | ConnState::Closing { .. } => {}
        }
    }

    /// The one way out: deregister, unsubscribe, give back limits, free the slot.
    pub(super) fn close(&mut self, key: usize, why: Closed) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let stats = &self.shared.stats[self.id];
        WorkerStats::sub(gauge(stats, &conn.state), 1);
        WorkerStats::add(&stats.closed, 1);
        if why == Closed::PeerReset {
            WorkerStats::add(&stats.peer_resets, 1);
        }
        match &conn.state {
            ConnState::Sse(sse) => self.unsubscribe(key, &sse.channels),
            ConnState::Ws(ws) => {
                self.unsubscribe(key, &ws.channels);
                self.stop_waiting(key, conn.gen, &ws.waiting);
            }
            ConnState::Request(_) | ConnState::Closing { .. } => {}
        }
        if let Some(parked) = self.parked.remove(&key) {
            self.abandon(key, parked);
        }
        match conn.ip_slot.take() {
            Some((SlotKind::Sse, ip)) => self.shared.sse_limiter.release(ip),
            Some((SlotKind::Ws, ip)) => self.shared.ws_limiter.release(ip),
            None => {}
        }
        self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
        log::trace!("reactor {}: closed {} ({why:?})", self.id, conn.peer);
    }

    /// Writes every connection that got bytes this turn.
    pub(super) fn flush_dirty(&mut self, now: u64) {
        let dirty = std::mem::take(&mut self.dirty);
        for &(key, gen) in &dirty {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.gen != gen {
                continue;
            }
            conn.dirty = false;
            if conn.blocked
                || conn.queue.is_empty() && !matches!(conn.state, ConnState::Closing { .. })
            {
                continue;
            }
            if self.hold_sse(key, now) {
                continue;
            }
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            let done = conn.flush(FLUSH_BUDGET);
            let stats = &self.shared.stats[self.id];
            WorkerStats::add(&stats.bytes_written, done.bytes as u64);
            WorkerStats::add(&stats.events_written, done.events as u64);
            WorkerStats::add(&stats.write_calls, done.calls as u64);
            match done.status {
                IoStatus::Closed | IoStatus::Reset => self.close(key, Closed::PeerReset),
                IoStatus::Error(_) => self.close(key, Closed::Error),
                IoStatus::WouldBlock => {}
                // Budget spent with bytes left: the rest goes next turn.
                IoStatus::Progress(_) if !conn.queue.is_empty() => {
                    conn.dirty = true;
                    self.dirty.push((key, gen));
                }
                IoStatus::Progress(_) => {
                    conn.shut_when_drained();
                }
            }
        }
        // Keep the allocation for the next turn.
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    pub(super) fn run_timers(&mut self, now: u64) {
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.expire(now, &mut fired);
        for entry in fired.drain(..) {
            let Some(conn) = self.conns.get_mut(entry.key) else {
                continue;
            };
            if conn.gen != entry.gen {
                continue;
            }
            let (key, gen) = (entry.key, entry.gen);
            match (entry.kind, &mut conn.state) {
                (TimerKind::Request, ConnState::Request(req)) => {
                    if now < req.deadline_ms {
                        let at = req.deadline_ms;
                        self.timers.schedule(at, key, gen, TimerKind::Request);
                    } else if req.parked {
                        self.parked_timeout(key, now);
                    } else if req.buf.is_empty() && req.served > 0 {
                        // An idle keep-alive connection: just close it.
                        self.close(key, Closed::Timeout);
                    } else {
                        let err = HttpError::new(
                            408,
                            "request_timeout",
                            "the request did not arrive in time",
                        );
                        self.reject(key, &err, now);
                    }
                }
                (TimerKind::Heartbeat, ConnState::Sse(sse)) => {
                    if now >= sse.next_ping_ms {
                        sse.next_ping_ms = now + self.shared.config.sse.heartbeat_ms;
                        if conn.queue.is_empty() {
                            let ping = sse.control(sse::PING);
                            conn.queue.push_control(ping);
                            self.mark_dirty(key, gen);
                        }
                    }
                    let Some(ConnState::Sse(sse)) = self.conns.get(key).map(|c| &c.state) else {
                        continue;
                    };
                    let at = sse.next_ping_ms;
                    self.timers.schedule(at, key, gen, TimerKind::Heartbeat);
                }
                (TimerKind::Heartbeat, ConnState::Ws(_)) => self.ws_heartbeat(key, gen, now),
                (TimerKind::Linger, ConnState::Closing { .. }) => self.close(key, Closed::Timeout),
                (TimerKind::Batch, ConnState::Sse(_)) => self.mark_dirty(key, gen),
                _ => {}
            }
        }
        self.fired = fired;
    }
}
