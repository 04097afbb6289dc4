//! The Redis job engine (Redis mode): this node's side of a worker
//! protocol any language can speak over the redis-server redix already
//! uses (the function library in `scripts/jobs.lua`; the README's "Worker
//! protocol" has the command sequence).
//!
//! - A job is a hash `<prefix>job:<id>` and an entry in its kind's queue
//!   stream `<prefix>jobs:<kind>`, read by workers through the consumer
//!   group `workers`. Its events go through the channel publish
//!   (`publish.lua` inside the library): the stream `<prefix>s:job:<id>`,
//!   the cluster-wide id sequence, pub/sub `<prefix>c:job:<id>`, so any
//!   node's hub serves them like any channel's.
//! - This thread holds its own command connection: submissions (one
//!   `FCALL redix_job_submit` each, pipelined per batch: cache, in-flight
//!   job per URL, queue and hash in one atomic step), lookups, and every
//!   `SWEEP_MS` the sweep (`FCALL redix_jobs_sweep`): jobs stalled or out
//!   of attempts fail, the queues' figures feed the breaker and gauges.
//!   Every node sweeps; the functions make a job end once.
//! - A second thread (`done`) holds a pub/sub connection on
//!   `<prefix>jobs:done`, so summarize requests parked here learn of
//!   their job's end whoever ended it.
//!
//! - Redis Cluster (`redis.cluster`): the connection is the cluster's,
//!   routing each command by its key; a job's keys carry the tag
//!   `{job:<id>}` and the queues `{jobs}`, so every function call stays in
//!   one slot, and what one atomic function does on a single server is a
//!   sequence of single-slot commands (`cluster`). `FUNCTION LOAD` goes to
//!   every master, again whenever one answers "Function not found".
//!
//! Nothing here blocks a reactor: requests come through the bounded queue
//! of [`Jobs`], answers go out through mailboxes, and while Redis cannot
//! be used every request is answered `503 redis_unavailable` at once. The
//! engine itself blocks on Redis, within `redis.timeout_ms`.
//!
//! Bounds: jobs followed here (submitted or joined by this node) at most
//! `jobs.max_jobs`, for `jobs.ttl_ms`; [`MAX_WAITERS`] parked requests per
//! job; `NOTES` endings waiting for the engine; queue streams refuse new
//! jobs at `jobs.max_jobs` entries (`TOOMANY`), and the sweep trims what
//! workers acknowledged.

mod cluster;
mod done;
mod ends;
pub mod functions;
mod requests;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use redis::{ConnectionLike, RedisError};

use self::done::{Listener, Note};
use self::functions::{Settings, Swept};
use super::embedded::log_breaker;
use super::owners::InFlight;
use super::{Jobs, Request};
use crate::bridge::wire::{connect_cluster, connect_master, link_failed};
use crate::bridge::{Backoff, Quiet};
use crate::clock::Clock;
use crate::config::{JobsConfig, RedisConfig};
use crate::link::Names;
use crate::mailbox::{ConnRef, Mailbox};

pub use super::embedded::MAX_WAITERS;

/// How often the sweep runs (and the breaker is looked at).
const SWEEP_MS: u64 = 250;
/// Requests sent in one pipeline, at most.
const BATCH: usize = 256;
/// Job endings waiting for the engine, at most.
const NOTES: usize = 4096;
/// A parked request is long gone this long after its window: its waiter
/// is dropped.
const WAITER_SLACK_MS: u64 = 10_000;

/// What the engine needs.
pub struct Parts {
    pub config: JobsConfig,
    pub redis: RedisConfig,
    /// Where the master is now (read at each connect).
    pub master: Arc<crate::bridge::Master>,
    /// The largest event a worker may send (`limits.max_body_bytes`, as
    /// for a publish).
    pub max_event_bytes: usize,
    pub clock: Clock,
    pub mailboxes: Vec<Arc<Mailbox>>,
    pub jobs: Arc<Jobs>,
    pub requests: Receiver<Request>,
    /// The engine thread's heartbeat, for the watchdog.
    pub beat: crate::health::Beat,
}

/// Starts the engine's thread (the listener starts once Redis has taken
/// the functions).
pub fn start(parts: Parts) -> Result<(), String> {
    let engine = Engine::new(parts);
    std::thread::Builder::new()
        .name("redix-jobs".into())
        .spawn(move || engine.run())
        .map(|_| ())
        .map_err(|e| format!("spawn the jobs thread: {e}"))
}

/// The command connection (Redis Cluster: the cluster connection, which
/// routes each command by its key), counted in `Jobs::fds` while open.
struct Link {
    con: Box<dyn ConnectionLike + Send>,
    jobs: Arc<Jobs>,
}

impl Link {
    fn new(con: Box<dyn ConnectionLike + Send>, jobs: &Arc<Jobs>) -> Link {
        jobs.fds.fetch_add(1, Ordering::Relaxed);
        Link {
            con,
            jobs: jobs.clone(),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.jobs.fds.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A job this node submitted or joined, until it ends.
struct Tracked {
    /// This node created it, for this client (0: nobody): its end counts
    /// in this node's figures and gives the client's slot back.
    owner: Option<u64>,
    since_ms: u64,
    /// Summarize requests parked on it, and when the last one came.
    waiters: Vec<ConnRef>,
    waiters_ms: u64,
    /// Redis Cluster: the URL of a summary this node created, whose
    /// cache this node writes when it ends.
    url: Option<String>,
}

/// What the breaker reads from one sweep to the next.
#[derive(Debug, Default)]
struct Progress {
    /// (entries the groups read, worker calls) at the last sweep.
    seen: Option<(u64, u64)>,
    /// When either last moved (engine clock, ms).
    at_ms: u64,
    /// Since when work has waited without a break.
    waiting_since: Option<u64>,
}

struct Engine {
    parts: Parts,
    names: Names,
    settings: Settings,
    link: Option<Link>,
    /// The functions, settings and groups are in place.
    set_up: bool,
    backoff: Backoff,
    quiet: Quiet,
    /// No connect or setup before this.
    retry_at: Instant,
    /// Handed to the listener when it starts.
    notes_tx: Option<Sender<Note>>,
    notes: Receiver<Note>,
    tracked: HashMap<String, Tracked>,
    /// Jobs this node created and not yet ended, per client.
    in_flight: InFlight,
    progress: Progress,
}

impl Engine {
    fn new(parts: Parts) -> Engine {
        let (notes_tx, notes) = crossbeam_channel::bounded(NOTES);
        let r = &parts.redis;
        let backoff = Backoff::new(r.backoff_min_ms, r.backoff_max_ms);
        let progress = Progress {
            at_ms: parts.clock.now_ms(),
            ..Progress::default()
        };
        Engine {
            names: match r.is_cluster() {
                true => Names::clustered(&r.prefix),
                false => Names::new(&r.prefix),
            },
            settings: Settings::of(&parts.config, parts.max_event_bytes),
            link: None,
            set_up: false,
            backoff,
            quiet: Quiet::default(),
            retry_at: Instant::now(),
            notes_tx: Some(notes_tx),
            notes,
            tracked: HashMap::new(),
            in_flight: InFlight::default(),
            progress,
            parts,
        }
    }

    fn run(mut self) {
        let requests = self.parts.requests.clone();
        let notes = self.notes.clone();
        let mut next_sweep = Instant::now();
        loop {
            self.parts.beat.stamp();
            let wait = next_sweep.saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(requests) -> r => match r {
                    Ok(first) => {
                        let mut batch = vec![first];
                        batch.extend(requests.try_iter().take(BATCH - 1));
                        self.handle(batch);
                    }
                    Err(_) => return,
                },
                recv(notes) -> n => if let Ok(n) = n {
                    self.note(n);
                },
                default(wait) => {}
            }
            if Instant::now() >= next_sweep {
                self.sweep();
                next_sweep = Instant::now() + Duration::from_millis(SWEEP_MS);
            }
        }
    }

    /// Connected and set up, or (re)trying that if it is time; false when
    /// Redis cannot be used now.
    fn ready(&mut self) -> bool {
        if self.set_up && self.link.is_some() {
            return true;
        }
        if Instant::now() < self.retry_at {
            return false;
        }
        if self.link.is_none() {
            match self.connect() {
                Ok(con) => self.link = Some(Link::new(con, &self.parts.jobs)),
                Err(e) => {
                    self.failed("connection", &e);
                    return false;
                }
            }
        }
        let Some(link) = self.link.as_mut() else {
            return false;
        };
        if let Err(e) = functions::setup(link.con.as_mut(), &self.names, &self.settings) {
            self.failed("setup (FUNCTION LOAD, XGROUP CREATE)", &e);
            return false;
        }
        self.set_up = true;
        self.backoff.reset();
        self.quiet.reset();
        log::info!(
            "jobs: Redis worker protocol ready: queues {} and {}, group {}",
            self.names.jobs_queue("summarize"),
            self.names.jobs_queue("ask"),
            functions::GROUP
        );
        if let Some(tx) = self.notes_tx.take() {
            self.start_listener(tx);
        }
        true
    }

    /// The master's connection, or (Redis Cluster) the cluster's.
    fn connect(&self) -> Result<Box<dyn ConnectionLike + Send>, RedisError> {
        let timeout = Duration::from_millis(self.parts.redis.timeout_ms);
        match self.names.is_cluster() {
            true => connect_cluster(&self.parts.master.seeds, timeout, timeout)
                .map(|c| Box::new(c) as Box<dyn ConnectionLike + Send>),
            false => connect_master(&self.parts.master, timeout)
                .map(|c| Box::new(c) as Box<dyn ConnectionLike + Send>),
        }
    }

    /// Redis failed `what`: a broken link is dropped; setup runs again
    /// after the backoff.
    fn failed(&mut self, what: &str, e: &RedisError) {
        if link_failed(e) {
            self.link = None;
        }
        self.set_up = false;
        self.quiet.warn(format_args!(
            "jobs: Redis {what} failed: {e}; job requests get 503 until it works"
        ));
        self.retry_at = Instant::now() + self.backoff.next_wait();
    }

    fn start_listener(&self, notes: Sender<Note>) {
        let r = &self.parts.redis;
        let listener = Listener {
            master: self.parts.master.clone(),
            channel: self.names.jobs_done(),
            timeout: Duration::from_millis(r.timeout_ms),
            backoff_min_ms: r.backoff_min_ms,
            backoff_max_ms: r.backoff_max_ms,
            notes,
            jobs: self.parts.jobs.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("redix-jobs-done".into())
            .spawn(move || listener.run());
        if let Err(e) = spawned {
            log::error!("jobs: cannot start the listener thread ({e}); summaries come by 202 only");
        }
    }

    /// Every `SWEEP_MS`: forgets what is long over, runs the sweep,
    /// moves the breaker.
    fn sweep(&mut self) {
        let now = self.parts.clock.now_ms();
        self.forget(now);
        if !self.ready() {
            return;
        }
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let swept = match self.names.is_cluster() {
            true => {
                let (names, settings, config) = (&self.names, &self.settings, &self.parts.config);
                cluster::reloading(link.con.as_mut(), names, settings, |con| {
                    cluster::sweep(con, names, config)
                })
            }
            false => functions::sweep_cmd(&self.names, &self.parts.config)
                .query(link.con.as_mut())
                .and_then(functions::parse_sweep),
        };
        match swept {
            Ok(s) => self.account(s, now),
            Err(e) => self.failed("sweep", &e),
        }
    }

    /// Counts what the sweep did; feeds the breaker. Progress is a worker
    /// taking an entry or calling `redix_job_event`; a job redix failed
    /// (stalled, exhausted) is none.
    fn account(&mut self, s: Swept, now: u64) {
        let (jobs, cfg) = (&self.parts.jobs, &self.parts.config);
        for id in &s.stalled {
            log::info!(
                "jobs: job {id} had no event for {} ms: failed worker_stalled",
                cfg.stall_ms
            );
        }
        for id in &s.exhausted {
            log::info!("jobs: job {id} was delivered too often: failed attempts_exhausted");
        }
        let stats = &jobs.stats;
        stats
            .stalled
            .fetch_add(s.stalled.len() as u64, Ordering::Relaxed);
        stats.pending.store(s.waiting, Ordering::Relaxed);
        stats.running.store(s.delivered, Ordering::Relaxed);
        let p = &mut self.progress;
        let seen = (s.read, s.progress);
        if p.seen.is_some_and(|before| before != seen) {
            p.at_ms = now;
        }
        p.seen = Some(seen);
        p.waiting_since = match s.waiting {
            0 => None,
            _ => Some(p.waiting_since.unwrap_or(now)),
        };
        let since = p.at_ms.max(p.waiting_since.unwrap_or(0));
        let moved = jobs.breaker.evaluate(now, s.waiting, since, cfg);
        log_breaker(moved, s.waiting);
    }

    /// Drops jobs followed longer than they live, and waiters whose
    /// request has long been answered by its window's end.
    fn forget(&mut self, now: u64) {
        let cfg = &self.parts.config;
        let (ttl, waited) = (cfg.ttl_ms, cfg.max_wait_ms + WAITER_SLACK_MS);
        let in_flight = &mut self.in_flight;
        self.tracked.retain(|_, t| {
            let keep = now.saturating_sub(t.since_ms) < ttl;
            if !keep {
                // Its end went unheard; it is gone from Redis by now.
                if let Some(owner) = t.owner {
                    in_flight.release(owner);
                }
            }
            keep
        });
        for t in self.tracked.values_mut() {
            if now.saturating_sub(t.waiters_ms) > waited {
                t.waiters.clear();
            }
        }
    }
}
