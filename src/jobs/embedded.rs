//! The embedded job engine (no Redis): one thread keeps the jobs, the
//! summary cache and the in-flight job per URL, and runs the built-in demo
//! worker, which streams each job's tokens with a small pause between
//! them. Nothing here blocks a reactor: requests come through a bounded
//! queue and answers go back through the reactors' mailboxes.
//!
//! Bounds: `jobs.max_jobs` jobs at once (finished ones expire after
//! `jobs.ttl_ms`), `jobs.cache_max` summaries, [`MAX_WAITERS`] parked
//! requests per job, `jobs.demo_concurrency` jobs running, and
//! `limits.jobs_in_flight` jobs per client until they end (`owners`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::json;

use super::owners::InFlight;
use super::{demo, new_id, Jobs, Kind, Reply, Request, JOB_PREFIX};
use crate::clock::Clock;
use crate::config::JobsConfig;
use crate::hub::Hub;
use crate::mailbox::{ConnRef, Mailbox, Msg};

/// Requests parked on one job, at most; more get their 202 at once.
pub const MAX_WAITERS: usize = 1024;
/// Requests handled between two steps of the worker.
const BATCH: usize = 256;
/// How often finished jobs and stale cache entries are swept, and the
/// breaker looked at.
const SWEEP_MS: u64 = 250;

/// What the engine needs.
pub struct Parts {
    pub config: JobsConfig,
    pub hub: Arc<Hub>,
    pub clock: Clock,
    pub mailboxes: Vec<Arc<Mailbox>>,
    pub jobs: Arc<Jobs>,
    pub requests: Receiver<Request>,
}

/// Starts the engine's thread.
pub fn start(parts: Parts) -> Result<(), String> {
    std::thread::Builder::new()
        .name("redix-jobs".into())
        .spawn(move || Engine::new(parts).run())
        .map(|_| ())
        .map_err(|e| format!("spawn the jobs thread: {e}"))
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Done(String),
    Failed { code: String, message: String },
}

struct Job {
    kind: Kind,
    input: String,
    /// The client it counts against until it ends (0: nobody, or already
    /// released).
    owner: u64,
    /// The demo worker's tokens, and the next to send.
    tokens: Vec<String>,
    next: usize,
    /// Summarize requests parked on this job.
    waiters: Vec<ConnRef>,
    /// The id of the job's last event, once it ended.
    end_id: Option<u64>,
    ended_ms: Option<u64>,
}

struct Engine {
    parts: Parts,
    jobs: HashMap<String, Job>,
    /// The job in flight for a URL (summarize).
    by_url: HashMap<String, String>,
    /// URL → (summary, cached at ms).
    cache: HashMap<String, (String, u64)>,
    /// Jobs waiting for a worker slot, oldest first, with when they came.
    queue: VecDeque<(String, u64)>,
    /// Running jobs by when their next token is due.
    due: BTreeSet<(u64, String)>,
    /// Jobs not yet ended per client.
    in_flight: InFlight,
    next_sweep_ms: u64,
    /// When a worker last made progress (picked up a job, sent an event).
    progress_ms: u64,
}

impl Engine {
    fn new(parts: Parts) -> Engine {
        let now = parts.clock.now_ms();
        Engine {
            parts,
            jobs: HashMap::new(),
            by_url: HashMap::new(),
            cache: HashMap::new(),
            queue: VecDeque::new(),
            due: BTreeSet::new(),
            in_flight: InFlight::default(),
            next_sweep_ms: now,
            progress_ms: now,
        }
    }

    fn run(mut self) {
        loop {
            let now = self.now();
            let next = self.due.first().map_or(self.next_sweep_ms, |(t, _)| *t);
            let wait = Duration::from_millis(next.min(self.next_sweep_ms).saturating_sub(now));
            match self.parts.requests.recv_timeout(wait) {
                Ok(r) => self.handle(r),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            for _ in 0..BATCH {
                match self.parts.requests.try_recv() {
                    Ok(r) => self.handle(r),
                    Err(_) => break,
                }
            }
            let now = self.now();
            self.step(now);
            if now >= self.next_sweep_ms {
                self.sweep(now);
                self.next_sweep_ms = now + SWEEP_MS;
            }
        }
    }

    fn now(&self) -> u64 {
        self.parts.clock.now_ms()
    }

    fn answer(&self, to: ConnRef, reply: Reply) {
        if let Some(mailbox) = self.parts.mailboxes.get(to.reactor) {
            mailbox.send(Msg::Job { conn: to, reply });
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Summarize { url, reply, owner } => self.summarize(url, reply, owner),
            Request::Ask {
                question,
                reply,
                owner,
            } => match self.create(Kind::Ask, question, owner) {
                Ok(job_id) => self.answer(reply, Reply::Accepted { job_id }),
                Err(refused) => self.answer(reply, refused),
            },
            Request::Find { id, reply } => {
                let found = self.jobs.get(&id).map(|job| Reply::Found {
                    job_id: id.clone(),
                    end: job.end_id,
                });
                self.answer(reply, found.unwrap_or(Reply::NotFound));
            }
        }
    }

    fn summarize(&mut self, url: String, reply: ConnRef, owner: u64) {
        let stats = &self.parts.jobs.stats;
        if let Some((summary, _)) = self.cache.get(&url) {
            stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            let summary = summary.clone();
            let cached = Reply::Summary {
                url,
                summary,
                job_id: None,
                cached: true,
            };
            return self.answer(reply, cached);
        }
        let job_id = match self.by_url.get(&url) {
            Some(id) => {
                stats.joined.fetch_add(1, Ordering::Relaxed);
                id.clone()
            }
            None => match self.create(Kind::Summarize, url.clone(), owner) {
                Ok(id) => {
                    self.by_url.insert(url, id.clone());
                    id
                }
                Err(refused) => return self.answer(reply, refused),
            },
        };
        if let Some(job) = self.jobs.get_mut(&job_id) {
            if job.waiters.len() < MAX_WAITERS {
                job.waiters.push(reply);
            }
        }
        self.answer(reply, Reply::Accepted { job_id });
    }

    /// A new queued job counted against `owner`, or why not: the client
    /// is at its cap (429), or the node at `jobs.max_jobs` (503).
    fn create(&mut self, kind: Kind, input: String, owner: u64) -> Result<String, Reply> {
        self.in_flight
            .admit(owner, self.parts.jobs.in_flight_cap())?;
        let cfg = &self.parts.config;
        if self.jobs.len() >= cfg.max_jobs {
            return Err(Reply::Refused {
                status: 503,
                code: "jobs_full",
                message: format!("{} jobs are known; retry shortly", cfg.max_jobs),
                retry_after_s: 1,
            });
        }
        let id = new_id();
        let tokens = demo::tokens(kind, &input);
        self.in_flight.add(owner);
        let job = Job {
            kind,
            input,
            owner,
            tokens,
            next: 0,
            waiters: Vec::new(),
            end_id: None,
            ended_ms: None,
        };
        self.jobs.insert(id.clone(), job);
        self.queue
            .push_back((id.clone(), self.parts.clock.now_ms()));
        self.parts
            .jobs
            .stats
            .submitted
            .fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }
}

impl Engine {
    /// The demo worker: picks up queued jobs up to its concurrency and
    /// sends every token that is due.
    fn step(&mut self, now: u64) {
        let cfg = &self.parts.config;
        if !cfg.demo_worker {
            return;
        }
        while self.due.len() < cfg.demo_concurrency {
            let Some((id, _)) = self.queue.pop_front() else {
                break;
            };
            if self.jobs.contains_key(&id) {
                self.due.insert((now, id));
                self.progress_ms = now;
            }
        }
        while let Some((at, id)) = self.due.first().cloned() {
            if at > now {
                break;
            }
            self.due.remove(&(at, id.clone()));
            if self.send_next(&id, now) {
                let pause = self.parts.config.demo_token_ms;
                self.due.insert((now + pause, id));
            }
        }
    }

    /// Sends the job's next token, or its end; true while tokens remain.
    fn send_next(&mut self, id: &str, now: u64) -> bool {
        let Some(job) = self.jobs.get_mut(id) else {
            return false;
        };
        self.progress_ms = now;
        let channel = format!("{JOB_PREFIX}{id}");
        if job.kind == Kind::Summarize && demo::unreachable(&job.input) {
            let (code, message) = ("fetch_failed", format!("cannot fetch {}", job.input));
            let data = json!({"type": "error", "code": code, "message": message}).to_string();
            let end = self.parts.hub.publish(&channel, &data, None, now).id;
            let code = code.to_string();
            self.finish(id, Outcome::Failed { code, message }, end, now);
            return false;
        }
        if let Some(text) = job.tokens.get(job.next) {
            job.next += 1;
            let data = json!({"type": "token", "text": text}).to_string();
            self.parts.hub.publish(&channel, &data, None, now);
            return true;
        }
        let result = job.tokens.concat();
        let data = json!({"type": "done", "result": result}).to_string();
        let end = self.parts.hub.publish(&channel, &data, None, now).id;
        self.finish(id, Outcome::Done(result), end, now);
        false
    }

    /// Records the end of a job; answers the requests parked on it and,
    /// for a summary, caches it.
    fn finish(&mut self, id: &str, outcome: Outcome, end_id: u64, now: u64) {
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        job.end_id = Some(end_id);
        job.ended_ms = Some(now);
        self.in_flight.release(std::mem::take(&mut job.owner));
        let waiters = std::mem::take(&mut job.waiters);
        let (kind, input) = (job.kind, job.input.clone());
        let stats = &self.parts.jobs.stats;
        let reply = match outcome {
            Outcome::Done(summary) => {
                stats.completed.fetch_add(1, Ordering::Relaxed);
                if kind == Kind::Summarize {
                    self.by_url.remove(&input);
                    self.cache_summary(&input, &summary, now);
                }
                Reply::Summary {
                    url: input,
                    summary,
                    job_id: Some(id.to_string()),
                    cached: false,
                }
            }
            Outcome::Failed { code, message } => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                self.by_url.remove(&input);
                Reply::Failed {
                    job_id: id.to_string(),
                    code,
                    message,
                }
            }
        };
        for to in waiters {
            self.answer(to, reply.clone());
        }
    }

    fn cache_summary(&mut self, url: &str, summary: &str, now: u64) {
        let cap = self.parts.config.cache_max;
        if cap == 0 || self.parts.config.cache_ttl_ms == 0 {
            return;
        }
        if self.cache.len() >= cap {
            let oldest = self.cache.iter().min_by_key(|(_, (_, at))| *at);
            if let Some(url) = oldest.map(|(u, _)| u.clone()) {
                self.cache.remove(&url);
            }
        }
        self.cache
            .insert(url.to_string(), (summary.to_string(), now));
    }

    /// Expires finished jobs and cached summaries; moves the breaker;
    /// updates the gauges.
    fn sweep(&mut self, now: u64) {
        let cfg = &self.parts.config;
        let (ttl, cache_ttl) = (cfg.ttl_ms, cfg.cache_ttl_ms);
        let in_flight = &mut self.in_flight;
        self.jobs.retain(|_, job| {
            let keep = job.ended_ms.is_none_or(|t| now.saturating_sub(t) < ttl);
            if !keep {
                // Released when it ended; this only guards the count.
                in_flight.release(std::mem::take(&mut job.owner));
            }
            keep
        });
        self.cache
            .retain(|_, (_, at)| now.saturating_sub(*at) < cache_ttl);
        let jobs = &self.parts.jobs;
        let pending = self.queue.len() as u64;
        jobs.stats.pending.store(pending, Ordering::Relaxed);
        jobs.stats
            .running
            .store(self.due.len() as u64, Ordering::Relaxed);
        // Progress counts from the last a worker made, or from when the
        // oldest waiting job came if that is later.
        let since = self.queue.front().map_or(0, |(_, at)| *at);
        let moved = jobs.breaker.evaluate(
            now,
            pending,
            self.progress_ms.max(since),
            &self.parts.config,
        );
        log_breaker(moved, pending);
    }
}

/// One line per breaker transition.
pub fn log_breaker(moved: Option<super::BreakerState>, pending: u64) {
    use super::BreakerState::*;
    match moved {
        Some(Open) => log::warn!(
            "jobs: breaker open ({pending} jobs not picked up, workers make no progress): new submissions get 503"
        ),
        Some(HalfOpen) => log::info!("jobs: breaker half-open: the next submission is a probe"),
        Some(Closed) => log::info!("jobs: workers make progress again: breaker closed"),
        None => {}
    }
}
