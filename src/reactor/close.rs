//! Leaving: a graceful close (last bytes, then FIN and a short linger),
//! the drain on shutdown, and [`Worker::close`], the one way out, which
//! deregisters, unsubscribes, gives back per-IP slots and parked work, and
//! frees the slot.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::timer::TimerKind;
use super::{release_slot, Closed, Worker};
use crate::conn::{ConnState, Phase};
use crate::metrics::WorkerStats;
use crate::proto::sse;
use crate::proto::ws::close_code;

impl Worker {
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
        self.moved(old.phase(), Phase::Closing);
        self.leave(key, gen, &old);
        let linger = self.shared.config.shutdown.linger_ms;
        self.timers
            .schedule(now + linger, key, gen, TimerKind::Linger);
        self.mark_dirty(key, gen);
    }

    /// A connection stops taking events and waiting for anything: off the
    /// local index (and the hub's, for its last local subscriber), off
    /// the lists of channels loading, and its parked request given back.
    fn leave(&mut self, key: usize, gen: u32, state: &ConnState) {
        match state {
            ConnState::Sse(sse) => self.unsubscribe(key, &sse.channels),
            ConnState::Ws(ws) => {
                self.unsubscribe(key, &ws.channels);
                self.stop_waiting(key, gen, ws.waiting());
            }
            ConnState::Request(_) | ConnState::Closing { .. } => {}
        }
        if let Some(parked) = self.parked.remove(&key) {
            self.abandon(key, parked);
        }
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
            ConnState::Ws(_) => {
                let sse_cfg = &self.shared.config.sse;
                let (base, jitter) = (sse_cfg.retry_ms, sse_cfg.retry_jitter_ms);
                let retry = base + self.jitter(jitter);
                let reason = format!(r#"{{"retry":{retry}}}"#);
                self.close_ws(key, close_code::RESTART, &reason, now);
            }
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
        WorkerStats::sub(self.gauge(conn.state.phase()), 1);
        let stats = self.stats();
        WorkerStats::add(&stats.closed, 1);
        if why == Closed::PeerReset {
            WorkerStats::add(&stats.peer_resets, 1);
        }
        self.leave(key, conn.gen, &conn.state);
        release_slot(&self.shared.access, conn.ip_slot.take());
        self.shared.fds.open_conns.fetch_sub(1, Ordering::Relaxed);
        log::trace!("reactor {}: closed {} ({why:?})", self.id, conn.peer);
    }

    pub(super) fn begin_shutdown(&mut self, now: u64) {
        let drain = self.shared.config.shutdown.drain_ms;
        self.drain_deadline = Some(now + drain);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let total = self.conns.len();
        let others = self.plan_drain(now);
        log::info!(
            "reactor {}: draining {total} connections within {drain} ms (streams paced over {} ms)",
            self.id,
            drain * 3 / 4
        );
        for key in others {
            self.shutdown_conn(key, now);
        }
    }

    pub(super) fn close_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key, Closed::Shutdown);
        }
    }
}
