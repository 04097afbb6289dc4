//! Liveness: every reactor stamps the clock at the end of each turn, and a
//! reactor whose stamp is older than [`STUCK_AFTER_MS`] counts as stuck
//! (`/readyz` answers 503, the systemd watchdog is withheld). The bridge
//! threads (Redis, market, jobs) stamp a [`Beat`] each turn too, and sleep
//! in slices that stamp, so the watchdog can also tell one of them wedged.
//! Also the process-wide "draining" flag the first SIGTERM sets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;

/// The longest a beating thread sleeps without stamping.
const BEAT_SLICE: Duration = Duration::from_millis(1000);

/// A bridge thread's heartbeat.
#[derive(Debug, Clone)]
pub struct Beat {
    name: &'static str,
    at: Arc<AtomicU64>,
    clock: Clock,
}

impl Beat {
    /// The thread is alive now.
    pub fn stamp(&self) {
        self.at.store(self.clock.now_ms(), Ordering::Relaxed);
    }

    /// The thread ends on purpose: it no longer counts.
    pub fn retire(&self) {
        self.at.store(u64::MAX, Ordering::Relaxed);
    }

    /// Sleeps `d` in slices, stamping between them.
    pub fn sleep(&self, d: Duration) {
        let mut left = d;
        loop {
            self.stamp();
            if left.is_zero() {
                return;
            }
            let slice = left.min(BEAT_SLICE);
            std::thread::sleep(slice);
            left -= slice;
        }
    }
}

/// A reactor that has not turned for this long counts as stuck. An idle
/// reactor still turns every second.
pub const STUCK_AFTER_MS: u64 = 5_000;

#[derive(Debug)]
pub struct Health {
    /// Set by the first SIGTERM/SIGINT.
    shutting_down: AtomicBool,
    /// When each reactor last finished a turn (ms on the process clock).
    last_turn_ms: Box<[AtomicU64]>,
    /// The bridge threads' heartbeats (a handful, registered at start).
    beats: Mutex<Vec<Beat>>,
}

impl Health {
    pub fn new(reactors: usize) -> Health {
        Health {
            shutting_down: AtomicBool::new(false),
            last_turn_ms: (0..reactors).map(|_| AtomicU64::new(0)).collect(),
            beats: Mutex::new(Vec::new()),
        }
    }

    /// A heartbeat for the bridge thread `name`, stamped now.
    pub fn beat(&self, name: &'static str, clock: Clock) -> Beat {
        let beat = Beat {
            name,
            at: Arc::new(AtomicU64::new(clock.now_ms())),
            clock,
        };
        if let Ok(mut beats) = self.beats.lock() {
            beats.push(beat.clone());
        }
        beat
    }

    /// A bridge thread whose heartbeat is older than `within_ms`, if any.
    pub fn stale_thread(&self, now_ms: u64, within_ms: u64) -> Option<&'static str> {
        let beats = self.beats.lock().ok()?;
        beats
            .iter()
            .find(|b| now_ms.saturating_sub(b.at.load(Ordering::Relaxed)) > within_ms)
            .map(|b| b.name)
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

    #[test]
    fn a_bridge_thread_that_stops_beating_is_named() {
        let h = Health::new(1);
        let clock = Clock::start();
        let beat = h.beat("redis-pubsub", clock);
        let now = clock.now_ms();
        assert_eq!(h.stale_thread(now, 1000), None);
        assert_eq!(h.stale_thread(now + 1001, 1000), Some("redis-pubsub"));
        beat.sleep(Duration::ZERO);
        assert_eq!(h.stale_thread(clock.now_ms(), 1000), None);
    }
}
