//! Jobs: `POST /api/summarize` and `GET /api/ask`, accepted at once and
//! run elsewhere; their output streams as events on the channel
//! `job:<id>`, through the hub like any channel's.
//!
//! - A reactor hands a [`Request`] to the job engine through [`Jobs`]
//!   (a bounded queue: never waits) and parks the connection; the engine
//!   answers through the reactor's mailbox ([`crate::mailbox::Msg::Job`]).
//! - The engine is a thread: in embedded mode it keeps the jobs, the
//!   summary cache and a built-in demo worker (`embedded`); in Redis mode
//!   it is the node's side of a worker protocol any language can speak.
//! - A job's events are JSON objects with a `type`: `token`
//!   (`{"type":"token","text":"…"}`), then `done` (`{"type":"done",
//!   "result":"…"}`) or `error` (`{"type":"error","code":"…",
//!   "message":"…"}`). SSE names each event after its type.
//! - The breaker ([`Breaker`]) is read by the API before anything is
//!   queued: when workers make no progress, submissions get 503 at once.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::mailbox::ConnRef;

pub mod demo;
pub mod embedded;
pub mod owners;
pub mod redis;

pub use crate::event::{job_event_name, JOB_PREFIX};

/// Requests waiting for the engine, at most.
pub const QUEUE_CAPACITY: usize = 4096;

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Summarize the page at a URL (cached per URL).
    Summarize,
    /// Answer a question, streamed token by token.
    Ask,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Summarize => "summarize",
            Kind::Ask => "ask",
        }
    }
}

/// Work for the job engine; each answers `reply` once. `owner` names the
/// client a new job counts against (`limits.jobs_in_flight`, see
/// [`owners`]); 0 is nobody.
#[derive(Debug)]
pub enum Request {
    /// The cached summary of `url`, else a job for it (new, or the one in
    /// flight for the same URL, which does not count against `owner`);
    /// the end of that job is reported to `reply` as well, if it is still
    /// waiting.
    Summarize {
        url: String,
        reply: ConnRef,
        owner: u64,
    },
    /// A new ask job.
    Ask {
        question: String,
        reply: ConnRef,
        owner: u64,
    },
    /// Where job `id` stands.
    Find { id: String, reply: ConnRef },
}

pub use crate::mailbox::JobReply as Reply;

/// The breaker's states (as stored in [`Breaker`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Submissions are taken.
    Closed = 0,
    /// Workers make no progress: submissions get 503 at once.
    Open = 1,
    /// After the cool-down: one submission is let through as a probe;
    /// progress closes the breaker, none opens it again.
    HalfOpen = 2,
}

/// The job breaker, shared by the API (which reads it) and the engine
/// (which moves it).
#[derive(Debug, Default)]
pub struct Breaker {
    state: AtomicU8,
    /// Times it opened.
    pub opened: AtomicU64,
    /// When it last opened (engine clock, ms).
    opened_at_ms: AtomicU64,
}

impl Breaker {
    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    /// Moves to `to`; true when that is a change.
    pub fn set(&self, to: BreakerState) -> bool {
        let from = self.state.swap(to as u8, Ordering::AcqRel);
        if from == to as u8 {
            return false;
        }
        if to == BreakerState::Open {
            self.opened.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// The engine's periodic look: with `pending` jobs not picked up and
    /// the last worker progress at `progress_ms` (or when the oldest
    /// pending job came, if later), opens (too many pending,
    /// or no progress for `jobs.progress_ms` while work waits), lets a
    /// probe through after `jobs.cooldown_ms`, closes on progress since it
    /// opened. Returns the transition, if any, for the log.
    pub fn evaluate(
        &self,
        now: u64,
        pending: u64,
        progress_ms: u64,
        cfg: &crate::config::JobsConfig,
    ) -> Option<BreakerState> {
        let stuck = pending > 0 && now.saturating_sub(progress_ms) >= cfg.progress_ms;
        let full = pending >= cfg.max_pending as u64;
        let opened_at = self.opened_at_ms.load(Ordering::Acquire);
        let to = match self.state() {
            BreakerState::Closed if stuck || full => BreakerState::Open,
            BreakerState::Closed => return None,
            _ if progress_ms > opened_at && !full => BreakerState::Closed,
            BreakerState::Open if now.saturating_sub(opened_at) >= cfg.cooldown_ms => {
                BreakerState::HalfOpen
            }
            _ => return None,
        };
        if to == BreakerState::Open {
            self.opened_at_ms.store(now, Ordering::Release);
        }
        self.set(to).then_some(to)
    }

    /// Seconds a refused client should wait.
    pub fn retry_after_s(cfg: &crate::config::JobsConfig) -> u64 {
        cfg.cooldown_ms.div_ceil(1000).max(1)
    }

    /// Whether a new submission may go in: closed, or the one probe of a
    /// half-open breaker (which then counts as open until it shows
    /// progress).
    pub fn admit(&self, now_ms: u64) -> bool {
        match self.state() {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                let probe = self
                    .state
                    .compare_exchange(
                        BreakerState::HalfOpen as u8,
                        BreakerState::Open as u8,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok();
                if probe {
                    // The next probe waits a cool-down again.
                    self.opened_at_ms.store(now_ms, Ordering::Release);
                }
                probe
            }
        }
    }
}

/// Counters of the job engine, for `/metrics/prom`.
#[derive(Debug, Default)]
pub struct JobStats {
    pub submitted: AtomicU64,
    /// Summarize requests that joined the job in flight for their URL.
    pub joined: AtomicU64,
    pub cache_hits: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// Jobs ended because their worker went quiet.
    pub stalled: AtomicU64,
    /// Jobs queued and not yet picked up by a worker.
    pub pending: AtomicU64,
    /// Jobs a worker is running.
    pub running: AtomicU64,
    /// Requests refused because the engine's queue was full.
    pub refused: AtomicU64,
}

/// The reactors' handle on the job engine.
pub struct Jobs {
    tx: Sender<Request>,
    pub breaker: Breaker,
    pub stats: JobStats,
    /// File descriptors the engine holds (Redis mode: its connections),
    /// for `/debug/fds`.
    pub fds: AtomicU64,
    /// `limits.jobs_in_flight`, here so SIGHUP reaches the engine.
    in_flight_cap: AtomicU32,
}

impl Jobs {
    /// The handle and the engine's end of its queue.
    pub fn new() -> (Jobs, Receiver<Request>) {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_CAPACITY);
        let jobs = Jobs {
            tx,
            breaker: Breaker::default(),
            stats: JobStats::default(),
            fds: AtomicU64::new(0),
            in_flight_cap: AtomicU32::new(crate::config::DEFAULT_JOBS_IN_FLIGHT),
        };
        (jobs, rx)
    }

    /// Jobs one client may have in flight; 0 is no cap.
    pub fn in_flight_cap(&self) -> u32 {
        self.in_flight_cap.load(Ordering::Relaxed)
    }

    /// A new cap (at start, and on SIGHUP); clients above it keep their
    /// jobs and may start new ones once under it.
    pub fn set_in_flight_cap(&self, cap: u32) {
        self.in_flight_cap.store(cap, Ordering::Relaxed);
    }

    /// Queues a request without waiting; false when the queue is full.
    pub fn submit(&self, request: Request) -> bool {
        match self.tx.try_send(request) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// A new job id: 16 hex digits, unguessable enough that one client cannot
/// read another's job by counting.
pub fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish())
}

/// A job id as clients may send it back: 1 to 64 of `A-Z a-z 0-9 - _`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_events_are_named_after_their_type() {
        let name = job_event_name;
        assert_eq!(
            name("job:a", r#"{"type":"token","text":"x"}"#),
            Some("token")
        );
        assert_eq!(name("job:a", r#"{"text":"x","type":"done"}"#), Some("done"));
        assert_eq!(name("job:a", r#"{"type":"tokens"}"#), None);
        assert_eq!(name("job:a", r#"{"type":"other"}"#), None);
        assert_eq!(name("news", r#"{"type":"token"}"#), None);
        let ev = crate::event::Event::new(7, "job:a".into(), r#"{"type":"done","result":"r"}"#);
        assert!(ev.ends_job);
        assert!(std::str::from_utf8(&ev.sse)
            .unwrap()
            .contains("event: done\n"));
    }

    #[test]
    fn a_half_open_breaker_admits_one_probe() {
        let b = Breaker::default();
        assert!(b.admit(0));
        assert!(b.set(BreakerState::Open));
        assert!(!b.admit(0));
        b.set(BreakerState::HalfOpen);
        assert!(b.admit(0));
        assert!(!b.admit(0), "only one probe");
        assert_eq!(b.opened.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_breaker_opens_without_progress_and_closes_with_it() {
        let cfg = crate::config::JobsConfig {
            progress_ms: 1000,
            cooldown_ms: 500,
            max_pending: 10,
            ..Default::default()
        };
        let b = Breaker::default();
        assert_eq!(b.evaluate(500, 3, 0, &cfg), None, "not stuck yet");
        assert_eq!(b.evaluate(1000, 0, 0, &cfg), None, "nothing waits");
        assert_eq!(b.evaluate(1000, 3, 0, &cfg), Some(BreakerState::Open));
        assert_eq!(b.evaluate(1200, 3, 0, &cfg), None, "cooling down");
        assert_eq!(b.evaluate(1500, 3, 0, &cfg), Some(BreakerState::HalfOpen));
        assert!(b.admit(1500));
        assert_eq!(b.evaluate(1700, 3, 0, &cfg), None, "the probe waits");
        assert_eq!(b.evaluate(1800, 2, 1750, &cfg), Some(BreakerState::Closed));
        assert_eq!(
            b.evaluate(1900, 10, 1900, &cfg),
            Some(BreakerState::Open),
            "too many pending"
        );
    }

    #[test]
    fn ids_are_checked() {
        let id = new_id();
        assert!(valid_id(&id) && id.len() == 16);
        assert!(!valid_id("") && !valid_id("a b") && !valid_id(&"x".repeat(65)));
    }
}
