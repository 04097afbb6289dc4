//! The paced drain: at SIGTERM every stream is told to go, but not all in
//! the same millisecond. Each reactor shuffles its streams and ends them
//! at an even pace over the first three quarters of `shutdown.drain_ms`
//! (the last quarter lets the final bytes flush): SSE with `event:
//! reconnect` and a jittered `retry:`, WebSocket with 1012 and the same
//! jittered hint in its reason (`{"retry":MS}`). So 10,000 clients come
//! back spread over the window instead of at once.

use super::Worker;
use crate::conn::ConnState;

/// While pacing, the reactor turns at least this often.
pub(super) const PACE_TICK_MS: u64 = 5;

/// Streams still to end, in the order they go.
pub(super) struct Drain {
    order: Vec<(usize, u32)>,
    next: usize,
    start_ms: u64,
    pace_ms: u64,
}

impl Drain {
    /// Whether streams are still waiting to be ended.
    pub(super) fn pending(&self) -> bool {
        self.next < self.order.len()
    }
}

impl Worker {
    /// Orders this reactor's streams at random for the paced drain; other
    /// connections are handled at once by `shutdown_conn`.
    pub(super) fn plan_drain(&mut self, now: u64) -> Vec<usize> {
        let mut streams = Vec::new();
        let mut others = Vec::new();
        for (key, conn) in self.conns.iter() {
            match conn.state {
                ConnState::Sse(_) | ConnState::Ws(_) => streams.push((key, conn.gen)),
                _ => others.push(key),
            }
        }
        // Fisher-Yates with the reactor's own generator.
        for i in (1..streams.len()).rev() {
            let j = self.jitter(i as u64) as usize;
            streams.swap(i, j);
        }
        let pace_ms = self.shared.config.shutdown.drain_ms * 3 / 4;
        self.drain = Some(Drain {
            order: streams,
            next: 0,
            start_ms: now,
            pace_ms,
        });
        self.pace_drain(now);
        others
    }

    /// Ends the streams whose turn has come.
    pub(super) fn pace_drain(&mut self, now: u64) {
        let Some(d) = self.drain.as_mut() else {
            return;
        };
        let total = d.order.len() as u64;
        let elapsed = now.saturating_sub(d.start_ms);
        let due = match d.pace_ms {
            0 => total,
            pace => (total * elapsed / pace + 1).min(total),
        } as usize;
        let batch: Vec<(usize, u32)> = d.order[d.next.min(due)..due].to_vec();
        d.next = d.next.max(due);
        for (key, gen) in batch {
            if self.conns.get(key).is_some_and(|c| c.gen == gen) {
                self.shutdown_conn(key, now);
            }
        }
    }

    /// How long the reactor may sleep while pacing.
    pub(super) fn drain_timeout(&self) -> Option<u64> {
        self.drain
            .as_ref()
            .filter(|d| d.pending())
            .map(|_| PACE_TICK_MS)
    }
}
