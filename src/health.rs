//! Liveness: every reactor stamps the clock at the end of each turn, and a
//! reactor whose stamp is older than [`STUCK_AFTER_MS`] counts as stuck
//! (`/readyz` answers 503, the systemd watchdog is withheld). Also the
//! process-wide "draining" flag the first SIGTERM sets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A reactor that has not turned for this long counts as stuck. An idle
/// reactor still turns every second.
pub const STUCK_AFTER_MS: u64 = 5_000;

#[derive(Debug)]
pub struct Health {
    /// Set by the first SIGTERM/SIGINT.
    shutting_down: AtomicBool,
    /// When each reactor last finished a turn (ms on the process clock).
    last_turn_ms: Box<[AtomicU64]>,
}

impl Health {
    pub fn new(reactors: usize) -> Health {
        Health {
            shutting_down: AtomicBool::new(false),
            last_turn_ms: (0..reactors).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Reactor `id` finished a turn at `now_ms`.
    pub fn turned(&self, id: usize, now_ms: u64) {
        if let Some(t) = self.last_turn_ms.get(id) {
            t.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Every reactor finished a turn within `within_ms` of `now_ms`.
    pub fn reactors_alive(&self, now_ms: u64, within_ms: u64) -> bool {
        self.last_turn_ms
            .iter()
            .all(|t| now_ms.saturating_sub(t.load(Ordering::Relaxed)) <= within_ms)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reactor_that_stops_turning_is_stuck() {
        let h = Health::new(2);
        h.turned(0, 10_000);
        h.turned(1, 10_000);
        assert!(h.reactors_alive(12_000, STUCK_AFTER_MS));
        h.turned(0, 16_000);
        assert!(
            !h.reactors_alive(16_000, STUCK_AFTER_MS),
            "reactor 1 is 6 s behind"
        );
        assert!(!h.is_shutting_down());
        h.begin_shutdown();
        assert!(h.is_shutting_down());
    }
}
