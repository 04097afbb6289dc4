//! Plain HTTP on a connection: read what arrived, parse each complete
//! request, route it (`api::handle`) and queue the answer, or turn the
//! connection into a stream, a WebSocket or a request parked on Redis.
//! Pipelined requests are answered in order.

use bytes::Bytes;

use super::{Closed, Worker};
use crate::api::{self, Action, Ctx};
use crate::conn::io::{self, IoStatus};
use crate::conn::ConnState;
use crate::metrics::WorkerStats;
use crate::proto::http::{self, HttpError};

impl Worker {
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
                Action::Publish {
                    publish,
                    keep_alive,
                } => self.publish_via_redis(key, gen, publish, keep_alive, now),
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
