//! Coalescing under load: while a reactor writes many events per second
//! and each of its streams gets several per `queue.coalesce_ms`, stream
//! writes are held so that each stream is written at most once per that
//! window. More events leave in one `writev`, which costs about what one
//! event does, so CPU per delivery falls, for at most `coalesce_ms` more
//! latency. Responses, acknowledgements and closing connections are never
//! held, and a reactor below `queue.coalesce_above` deliveries/s (or whose
//! streams would get fewer than two events per window) writes at once.
//!
//! The rate is measured over windows of [`WINDOW_MS`] from the reactor's
//! own `events_written` counter, which holding does not change (the same
//! events are written, in fewer calls).

use std::sync::atomic::Ordering;

use super::Worker;
use crate::conn::ConnState;

/// How often the reactor's delivery rate is measured.
const WINDOW_MS: u64 = 250;

/// The rate measurement and the hold.
#[derive(Debug, Default)]
pub(super) struct Coalesce {
    window_start_ms: u64,
    written_at_start: u64,
    /// Holding stream writes while the rate stays high.
    pub(super) engaged: bool,
    /// Stream writes wait until then (reactor ms); 0 when not holding.
    pub(super) flush_at: u64,
    /// Every dirty connection left after the last flush is a held stream.
    pub(super) only_held: bool,
}

impl Worker {
    /// Once per window: is the delivery rate high enough to hold writes?
    pub(super) fn measure_rate(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.coalesce.window_start_ms);
        if elapsed < WINDOW_MS {
            return;
        }
        let stats = &self.shared.stats[self.id];
        let written = stats.events_written.load(Ordering::Relaxed);
        let streams =
            stats.conns_sse.load(Ordering::Relaxed) + stats.conns_ws.load(Ordering::Relaxed);
        let per_s = written.saturating_sub(self.coalesce.written_at_start) * 1000 / elapsed;
        let q = &self.shared.config.queue;
        // Events one stream gets per window, on average, times 1000.
        let per_stream_window = per_s * q.coalesce_ms / streams.max(1);
        let engaged = q.coalesce_ms > 0 && per_s >= q.coalesce_above && per_stream_window >= 2000;
        if engaged != self.coalesce.engaged {
            stats
                .coalescing
                .store(u64::from(engaged), Ordering::Relaxed);
            log::debug!(
                "reactor {}: {per_s} deliveries/s over {} streams; holding stream writes {}",
                self.id,
                streams,
                if engaged { "on" } else { "off" }
            );
        }
        self.coalesce = Coalesce {
            window_start_ms: now,
            written_at_start: written,
            engaged,
            flush_at: if engaged { self.coalesce.flush_at } else { 0 },
            only_held: self.coalesce.only_held && engaged,
        };
    }

    /// Whether this flush holds stream writes back (and, when it does not
    /// and coalescing is on, when the next stream flush is due).
    pub(super) fn holding_streams(&mut self, now: u64) -> bool {
        if !self.coalesce.engaged {
            return false;
        }
        if now < self.coalesce.flush_at {
            return true;
        }
        self.coalesce.flush_at = now + self.shared.config.queue.coalesce_ms;
        false
    }

    /// A connection whose writes may wait: an open stream whose queue is
    /// under half its caps (holding never makes a queue overflow).
    pub(super) fn is_held_stream(&self, key: usize) -> bool {
        let Some(c) = self.conns.get(key) else {
            return false;
        };
        matches!(c.state, ConnState::Sse(_) | ConnState::Ws(_))
            && c.queue.len_events() < self.limits.max_events / 2
            && c.queue.len_bytes() < self.limits.max_bytes / 2
    }

    /// Poll at most until the held writes are due; None when not holding.
    pub(super) fn held_until(&self, now: u64) -> Option<u64> {
        let c = &self.coalesce;
        (c.engaged && c.only_held && c.flush_at > now).then(|| c.flush_at - now)
    }
}
