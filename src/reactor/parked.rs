//! Requests waiting for Redis (Redis mode): a publish the command thread
//! runs, or an SSE stream whose channels are loading. The connection is
//! parked: it reads no further request until the answer is queued, a
//! timer bounds the wait (`redis.wait_ms`, then 503), and whatever the
//! request holds (a per-IP slot, a place among a channel's waiters) is
//! given back on every way out, answered, timed out or closed.
//!
//! Answers arrive through the mailbox as `(key, gen)`: a stale one (the
//! connection is gone, or the slot was reused) finds nothing parked and is
//! dropped.

use std::sync::Arc;

use bytes::Bytes;

use super::{Parked, Waiting, Worker};
use crate::api::answers::{publish_ok, redis_unavailable};
use crate::conn::ConnState;
use crate::link::{Command, Publish, Refused};
use crate::mailbox::{ConnRef, PublishReply};

impl Worker {
    /// Holds a request until Redis answers (or `redis.wait_ms` passes).
    pub(super) fn park(&mut self, key: usize, what: Waiting, now: u64) {
        self.park_until(key, what, now + self.shared.config.redis.wait_ms);
    }

    /// Holds a request until it is answered or `deadline` passes.
    pub(super) fn park_until(&mut self, key: usize, what: Waiting, deadline: u64) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let ConnState::Request(req) = &mut conn.state else {
            return;
        };
        let gen = conn.gen;
        req.parked = true;
        req.deadline_ms = deadline;
        self.arm_request(key);
        self.parked.insert(key, Parked { gen, what });
    }

    /// Takes the parked request of `(key, gen)` and lets the connection
    /// read requests again.
    pub(super) fn unpark(&mut self, key: usize, gen: u32) -> Option<Waiting> {
        if self.parked.get(&key)?.gen != gen {
            return None;
        }
        let parked = self.parked.remove(&key)?;
        if let Some(ConnState::Request(req)) = self.conns.get_mut(key).map(|c| &mut c.state) {
            req.parked = false;
        }
        Some(parked.what)
    }

    /// Gives back what a parked request held.
    pub(super) fn abandon(&mut self, key: usize, parked: Parked) {
        match parked.what {
            Waiting::Stream(start) => {
                self.shared.access.sse.release(start.ip_slot);
                let me = self.conn_ref(key, parked.gen);
                self.shared.hub.cancel_wait(&start.channels, me);
            }
            Waiting::Job(wait) => super::jobs::release_job(self, wait),
            Waiting::Admin(_) => self.admin_abandoned(),
            Waiting::Publish { .. } => {}
        }
    }

    pub(super) fn stop_waiting(&self, key: usize, gen: u32, waiting: &[(Arc<str>, Option<u64>)]) {
        if waiting.is_empty() {
            return;
        }
        let channels: Vec<Arc<str>> = waiting.iter().map(|(c, _)| c.clone()).collect();
        self.shared
            .hub
            .cancel_wait(&channels, self.conn_ref(key, gen));
    }

    /// A parked request ran out of time: 503, then close (later pipelined
    /// requests cannot be answered in order).
    pub(super) fn parked_timeout(&mut self, key: usize, now: u64) {
        let Some(gen) = self.conns.get(key).map(|c| c.gen) else {
            return;
        };
        match self.unpark(key, gen) {
            Some(Waiting::Job(wait)) => return self.job_timeout(key, wait, now),
            Some(Waiting::Admin(wait)) => return self.admin_timeout(key, wait, now),
            Some(what) => self.abandon(key, Parked { gen, what }),
            None => {}
        }
        let message = "Redis did not answer in time; retry shortly";
        let bytes = Bytes::from(redis_unavailable(message, false));
        self.close_gracefully(key, Some(bytes), false, now);
    }

    /// Channels that `(key, gen)` waited for have loaded, or cannot load.
    pub(super) fn retry_parked(&mut self, conn: ConnRef, channel: &Arc<str>) {
        let (key, gen) = (conn.key, conn.gen);
        let now = self.now_ms();
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if conn.gen != gen {
            return;
        }
        if matches!(conn.state, ConnState::Ws(_)) {
            return self.ws_retry_one(key, channel);
        }
        if !matches!(self.parked.get(&key), Some(p) if matches!(p.what, Waiting::Stream(_))) {
            return;
        }
        if let Some(Waiting::Stream(start)) = self.unpark(key, gen) {
            self.start_stream(key, start, now);
        }
    }

    /// Hands a publish to the Redis command thread; the answer comes back
    /// through the mailbox ([`Worker::published`]).
    pub(super) fn publish_via_redis(
        &mut self,
        key: usize,
        gen: u32,
        publish: Publish,
        keep_alive: bool,
        now: u64,
    ) {
        let channel = publish.channel.clone();
        let cmd = Command::Publish {
            publish,
            reply: self.conn_ref(key, gen),
        };
        let submitted = match &self.shared.redis {
            Some(redis) => redis.submit(cmd),
            None => Err(Refused::Down),
        };
        let refused = match submitted {
            Ok(()) => None,
            Err(Refused::Down) => Some("Redis is unreachable; retry shortly"),
            Err(Refused::Busy) => Some("too many publishes are waiting for Redis; retry shortly"),
        };
        if let Some(message) = refused {
            self.push_control(key, Bytes::from(redis_unavailable(message, keep_alive)));
            if !keep_alive {
                self.close_gracefully(key, None, false, now);
            }
            return;
        }
        let waiting = Waiting::Publish {
            channel,
            keep_alive,
        };
        self.park(key, waiting, now);
    }

    /// The Redis bridge answered the publish of `(key, gen)`.
    pub(super) fn publish_answered(&mut self, key: usize, gen: u32, reply: PublishReply) {
        let now = self.now_ms();
        let waits_for_it = |p: &Parked| p.gen == gen && matches!(p.what, Waiting::Publish { .. });
        if !self.parked.get(&key).is_some_and(waits_for_it) {
            return;
        }
        let Some(Waiting::Publish {
            channel,
            keep_alive,
        }) = self.unpark(key, gen)
        else {
            return;
        };
        let bytes = match reply {
            PublishReply::Done { id, duplicate } => {
                publish_ok(&id, &channel, duplicate, keep_alive)
            }
            PublishReply::Failed(message) => redis_unavailable(&message, keep_alive),
        };
        self.answer_parked(key, Bytes::from(bytes), keep_alive, now);
    }

    /// Queues the answer of a request that was parked; then, on a
    /// keep-alive connection, reads the requests behind it.
    pub(super) fn answer_parked(&mut self, key: usize, bytes: Bytes, keep_alive: bool, now: u64) {
        self.push_control(key, bytes);
        if !keep_alive {
            return self.close_gracefully(key, None, false, now);
        }
        let limits = &self.shared.config.limits;
        let (idle_ms, header_ms) = (limits.keepalive_timeout_ms, limits.header_timeout_ms);
        if let Some(ConnState::Request(req)) = self.conns.get_mut(key).map(|c| &mut c.state) {
            req.deadline_ms = now
                + if req.buf.is_empty() {
                    idle_ms
                } else {
                    header_ms
                };
        }
        self.arm_request(key);
        // Requests that arrived meanwhile, and what is left in the socket.
        self.read_requests(key, now);
    }
}
