//! Plain HTTP on a connection: read what arrived, parse each complete
//! request, route it (`api::handle`) and queue the answer, or turn the
//! connection into a stream, a WebSocket or a request parked on Redis.
//! Pipelined requests are answered in order.

use bytes::Bytes;

use super::{Closed, Worker, READ_BUDGET};
use crate::api::{self, Action, Ctx};
use crate::conn::io::{self, IoStatus};
use crate::conn::{ConnState, Stamp};
use crate::metrics::WorkerStats;
use crate::proto::http::{self, HttpError};

impl Worker {
    /// Reads and answers requests until the socket is drained, the turn's
    /// read budget is spent (then again next turn), or reading pauses: a
    /// request waits for Redis, or answers pile up unread past
    /// `queue.max_bytes` (reading resumes when they drain; the write
    /// deadline ends a peer that never reads).
    pub(super) fn read_requests(&mut self, key: usize, now: u64) {
        let limits = &self.shared.config.limits;
        let (cap, header_ms) = (
            limits.max_header_bytes + limits.max_body_bytes,
            limits.header_timeout_ms,
        );
        let reply_cap = self.shared.config.queue.max_bytes;
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let ConnState::Request(req) = &mut conn.state else {
                return;
            };
            if req.parked {
                return;
            }
            if conn.queue.len_bytes() >= reply_cap {
                if !req.paused {
                    req.paused = true;
                    WorkerStats::add(&self.shared.stats[self.id].read_pauses, 1);
                }
                return;
            }
            if budget == 0 {
                return self.read_again(key);
            }
            let before = req.buf.len();
            let status = io::read_into(&mut conn.stream, &mut req.buf, cap.min(before + budget));
            budget -= req.buf.len() - before;
            if req.buf.len() > before {
                conn.last_read = Stamp::at(now);
            }
            if before == 0 && !req.buf.is_empty() && req.served > 0 {
                // A request began on an idle keep-alive connection: it has
                // the header deadline from its first byte.
                req.deadline_ms = now + header_ms;
                self.arm_request(key);
            }
            self.answer_requests(key, now);
            if !self.after_read(key, status, now) {
                return;
            }
        }
    }

    /// What a read's status means once its requests are answered: true
    /// to read on.
    fn after_read(&mut self, key: usize, status: IoStatus, now: u64) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let in_request = matches!(conn.state, ConnState::Request(_));
        let closing = matches!(conn.state, ConnState::Closing { .. });
        match status {
            // The budget or the buffer ran out: the loop decides.
            IoStatus::Progress(_) if in_request => return true,
            // Upgraded with more bytes waiting: the new state reads them
            // (edge-triggered: nobody would call again).
            IoStatus::Progress(_) if !closing => self.on_readable(key),
            IoStatus::Progress(_) | IoStatus::WouldBlock => {}
            IoStatus::Closed if in_request && !conn.queue.is_empty() => {
                // Half-closed after its requests: answer, then close.
                self.close_gracefully(key, None, false, now);
            }
            // A closing connection still gets its last bytes (the linger
            // timer bounds it); a stream whose client left ends.
            IoStatus::Closed if closing => {}
            IoStatus::Closed => self.close(key, Closed::Normal),
            IoStatus::Reset => self.close(key, Closed::PeerReset),
            IoStatus::Error(_) => self.close(key, Closed::Error),
        }
        false
    }

    /// Parses and answers the complete requests at the front of the buffer.
    fn answer_requests(&mut self, key: usize, now: u64) {
        let shared = self.shared.clone();
        let limits = &shared.config.limits;
        let reply_cap = shared.config.queue.max_bytes;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let ConnState::Request(req) = &mut conn.state else {
                return;
            };
            if req.buf.is_empty() || req.parked || conn.queue.len_bytes() >= reply_cap {
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
            // The next request: idle until it starts, then the header
            // deadline from its first byte (see `read_requests`).
            req.deadline_ms = match req.buf.is_empty() {
                true => now + limits.keepalive_timeout_ms,
                false => now + limits.header_timeout_ms,
            };
            if !self.act(key, action, now) {
                return;
            }
        }
    }

    /// Carries out what the API decided; false when the connection stops
    /// reading requests (it streams, upgraded, waits or closes).
    fn act(&mut self, key: usize, action: Action, now: u64) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let gen = conn.gen;
        match action {
            Action::Respond { bytes, close } => {
                conn.queue.push_control(Bytes::from(bytes));
                self.mark_dirty(key, gen);
                self.arm_request(key);
                if close {
                    self.close_gracefully(key, None, false, now);
                }
                !close
            }
            Action::Stream(start) => {
                self.start_stream(key, start, now);
                false
            }
            Action::Upgrade(up) => {
                // Frames the client sent right behind its request.
                let early = match &mut conn.state {
                    ConnState::Request(req) => std::mem::take(&mut req.buf),
                    _ => Vec::new(),
                };
                self.start_ws(key, up, early, now);
                false
            }
            Action::Publish {
                publish,
                keep_alive,
            } => {
                self.publish_via_redis(key, gen, publish, keep_alive, now);
                true
            }
            Action::Job(start) => {
                self.start_job(key, gen, start, now);
                true
            }
            Action::Admin(start) => {
                self.start_admin(key, gen, start, now);
                true
            }
        }
    }

    /// Answers a request that cannot be served, then closes.
    pub(super) fn reject(&mut self, key: usize, err: &HttpError, now: u64) {
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
}
