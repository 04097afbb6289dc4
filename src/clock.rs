//! The process clock: milliseconds since start, the one timebase of
//! history ages, dedupe windows, canaries and reactor liveness. Modules
//! that must not read the clock (`hub`, `proto`) are handed its readings.

use std::time::Instant;

/// Milliseconds since the process started; cheap to copy into any thread.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}
