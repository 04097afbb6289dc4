//! Following jobs to their end: the jobs this node submitted or joined,
//! the endings the listener reports, and the answers they give the
//! summarize requests parked on a job. A job this node created holds its
//! client's slot of jobs in flight until it ends (or is forgotten).

use std::sync::atomic::Ordering;

use redis::{RedisError, Value};

use super::cluster;
use super::done::Note;
use super::functions::{self, Ending};
use super::{Engine, Tracked, MAX_WAITERS};
use crate::jobs::Reply;
use crate::mailbox::ConnRef;

impl Engine {
    /// Follows job `id` until it ends; `created` names the client it
    /// counts against when this node created it. At most `jobs.max_jobs`
    /// jobs: past that a job runs all the same, its parked requests get
    /// their 202, and its client's slot goes back at once.
    pub(super) fn track(&mut self, id: &str, waiter: Option<ConnRef>, created: Option<u64>) {
        let now = self.parts.clock.now_ms();
        let full = self.tracked.len() >= self.parts.config.max_jobs;
        if full && !self.tracked.contains_key(id) {
            if let Some(owner) = created {
                self.in_flight.release(owner);
            }
            return;
        }
        let t = self.tracked.entry(id.to_string()).or_insert(Tracked {
            owner: None,
            since_ms: now,
            waiters: Vec::new(),
            waiters_ms: now,
            url: None,
        });
        t.owner = t.owner.or(created);
        if let Some(w) = waiter.filter(|_| t.waiters.len() < MAX_WAITERS) {
            t.waiters.push(w);
            t.waiters_ms = now;
        }
    }

    /// What the listener reported.
    pub(super) fn note(&mut self, note: Note) {
        match note {
            Note::Ended { id, failed } => self.ended(&id, failed, None),
            Note::Resync => self.resync(),
        }
    }

    /// Endings may have gone unheard while the listener was away: looks
    /// at every job that still has requests parked on it, one pipeline.
    fn resync(&mut self) {
        let waited: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, t)| !t.waiters.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        if waited.is_empty() || !self.ready() {
            return;
        }
        let mut pipe = redis::pipe();
        for id in &waited {
            pipe.add_command(functions::ending_cmd(&self.names, id));
        }
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let read: Result<Vec<Value>, RedisError> = match link.con.supports_pipelining() {
            true => pipe.query(link.con.as_mut()),
            // A cluster connection: one by one, each to its job's slot.
            false => waited
                .iter()
                .map(|id| functions::ending_cmd(&self.names, id).query(link.con.as_mut()))
                .collect(),
        };
        let replies = match read {
            Ok(replies) => replies,
            Err(e) => return self.failed("reading jobs' ends", &e),
        };
        for (id, reply) in waited.iter().zip(replies) {
            if let Ok(Some(ending)) = functions::parse_ending(reply) {
                let failed = matches!(ending, Ending::Failed { .. });
                self.ended(id, failed, Some(ending));
            }
        }
    }

    /// Job `id` ended: counted if it is this node's; the requests parked
    /// on it get its result.
    fn ended(&mut self, id: &str, failed: bool, ending: Option<Ending>) {
        let Some(t) = self.tracked.remove(id) else {
            return;
        };
        if let Some(owner) = t.owner {
            self.in_flight.release(owner);
            let stats = &self.parts.jobs.stats;
            match failed {
                false => stats.completed.fetch_add(1, Ordering::Relaxed),
                true => stats.failed.fetch_add(1, Ordering::Relaxed),
            };
        }
        let url = t
            .url
            .filter(|_| t.owner.is_some() && self.names.is_cluster());
        if t.waiters.is_empty() && url.is_none() {
            return;
        }
        let Some(ending) = ending.or_else(|| self.read_ending(id)) else {
            return;
        };
        if let Some(url) = url {
            self.remember(id, &url, &ending);
        }
        let reply = match ending {
            Ending::Done { input, result } => Reply::Summary {
                url: input,
                summary: result,
                job_id: Some(id.to_string()),
                cached: false,
            },
            Ending::Failed { code, message } => Reply::Failed {
                job_id: id.to_string(),
                code,
                message,
            },
        };
        for to in t.waiters {
            self.answer(to, reply.clone());
        }
    }

    /// Redis Cluster: the end of a summary this node created, into the
    /// URL's cache (the job's function cannot reach that slot).
    fn remember(&mut self, id: &str, url: &str, ending: &Ending) {
        let summary = match ending {
            Ending::Done { result, .. } => Some(result.as_str()),
            Ending::Failed { .. } => None,
        };
        let cache_ttl = self.parts.config.cache_ttl_ms;
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let wrote = cluster::remember(link.con.as_mut(), &self.names, id, url, summary, cache_ttl);
        if let Err(e) = wrote {
            self.failed("caching a summary", &e);
        }
    }

    /// How job `id` ended, if it has and Redis says so now.
    fn read_ending(&mut self, id: &str) -> Option<Ending> {
        if !self.ready() {
            return None;
        }
        let link = self.link.as_mut()?;
        let read = functions::ending_cmd(&self.names, id)
            .query(link.con.as_mut())
            .and_then(functions::parse_ending);
        match read {
            Ok(ending) => ending,
            Err(e) => {
                self.failed("reading a job's end", &e);
                None
            }
        }
    }
}
