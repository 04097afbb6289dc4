//! The `[jobs]` section: `/api/summarize`, `/api/ask`, the engine, its
//! breaker and the built-in demo worker.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// How long `POST /api/summarize` holds the request for the result
    /// before answering 202 (`?wait=` overrides, up to `max_wait_ms`).
    pub wait_ms: u64,
    pub max_wait_ms: u64,
    /// A finished job (its events, its state) is kept this long.
    pub ttl_ms: u64,
    /// A summary is served from the cache this long.
    pub cache_ttl_ms: u64,
    /// Summaries cached at most (oldest first out).
    pub cache_max: usize,
    /// Jobs known at once (queued, running, finished and not expired).
    pub max_jobs: usize,
    /// Jobs queued and not picked up: at this many the breaker opens.
    pub max_pending: usize,
    /// Queued work and no worker progress for this long: the breaker
    /// opens.
    pub progress_ms: u64,
    /// An open breaker lets a probe through after this long (also the
    /// `Retry-After` of its 503s).
    pub cooldown_ms: u64,
    /// A started job with no event for this long fails `worker_stalled`.
    pub stall_ms: u64,
    /// Redis mode: a job whose worker sent nothing for this long may be
    /// taken over by another worker (`XAUTOCLAIM` min-idle); keep it below
    /// `stall_ms`, or a silent job fails before anyone retries it.
    pub visibility_ms: u64,
    /// Redis mode: deliveries of one job at most; past them it fails
    /// `attempts_exhausted`.
    pub max_attempts: u32,
    /// Events kept per job (its whole stream, for late subscribers).
    pub max_events: usize,
    /// Requests parked on one reactor at most (a summarize in its window,
    /// an ask waiting for its job); more get 503.
    pub parked_per_reactor: usize,
    /// Embedded mode: run the built-in demo worker.
    pub demo_worker: bool,
    /// The demo worker's pause between tokens.
    pub demo_token_ms: u64,
    /// Jobs the demo worker runs at once.
    pub demo_concurrency: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            wait_ms: 2_000,
            max_wait_ms: 10_000,
            ttl_ms: 600_000,
            cache_ttl_ms: 3_600_000,
            cache_max: 10_000,
            max_jobs: 10_000,
            max_pending: 1_000,
            progress_ms: 10_000,
            cooldown_ms: 5_000,
            stall_ms: 30_000,
            visibility_ms: 10_000,
            max_attempts: 3,
            max_events: 2_000,
            parked_per_reactor: 10_000,
            demo_worker: true,
            demo_token_ms: 40,
            demo_concurrency: 64,
        }
    }
}
