//! The engine's answers: a batch of requests as one pipeline (each its
//! own command and answer), and the endings the listener reports, which
//! answer the summarize requests parked on a job.

use std::sync::atomic::Ordering;

use redis::{RedisError, Value};

use super::done::Note;
use super::functions::{self, Ending, Submitted};
use super::{Engine, Tracked, MAX_WAITERS};
use crate::jobs::{new_id, Kind, Reply, Request};
use crate::mailbox::{ConnRef, Msg};

/// One reply of a pipeline.
type Answer = Result<Value, RedisError>;

impl Engine {
    /// Answers a batch of requests: one pipeline, or 503 at once when
    /// Redis cannot be used.
    pub(super) fn handle(&mut self, batch: Vec<Request>) {
        if !self.ready() {
            return batch.into_iter().for_each(|r| self.refuse(r));
        }
        let max_jobs = self.parts.config.max_jobs;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for request in &batch {
            let cmd = match request {
                Request::Summarize { url, .. } => {
                    functions::submit_cmd(&self.names, Kind::Summarize, url, &new_id(), max_jobs)
                }
                Request::Ask { question, .. } => {
                    functions::submit_cmd(&self.names, Kind::Ask, question, &new_id(), max_jobs)
                }
                Request::Find { id, .. } => functions::find_cmd(&self.names, id),
            };
            pipe.add_command(cmd);
        }
        let Some(link) = self.link.as_mut() else {
            return batch.into_iter().for_each(|r| self.refuse(r));
        };
        let answers: Result<Vec<Answer>, RedisError> = pipe.query(&mut link.con);
        match answers {
            Ok(answers) if answers.len() == batch.len() => {
                for (request, answer) in batch.into_iter().zip(answers) {
                    self.settle(request, answer);
                }
            }
            Ok(_) => batch.into_iter().for_each(|r| self.refuse(r)),
            Err(e) => {
                self.failed("job requests", &e);
                batch.into_iter().for_each(|r| self.refuse(r));
            }
        }
    }

    fn settle(&mut self, request: Request, answer: Answer) {
        let jobs = self.parts.jobs.clone();
        let stats = &jobs.stats;
        match request {
            Request::Summarize { url, reply: to, .. } => {
                let reply = match answer.and_then(functions::parse_submit) {
                    Ok(Submitted::Cached(summary)) => {
                        stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                        Reply::Summary {
                            url,
                            summary,
                            job_id: None,
                            cached: true,
                        }
                    }
                    Ok(Submitted::Joined(job_id)) => {
                        stats.joined.fetch_add(1, Ordering::Relaxed);
                        self.track(&job_id, Some(to), false);
                        Reply::Accepted { job_id }
                    }
                    Ok(Submitted::Created(job_id)) => {
                        stats.submitted.fetch_add(1, Ordering::Relaxed);
                        self.track(&job_id, Some(to), true);
                        Reply::Accepted { job_id }
                    }
                    Err(e) => self.refusal(&e),
                };
                self.answer(to, reply);
            }
            Request::Ask { reply: to, .. } => {
                let reply = match answer.and_then(functions::parse_submit) {
                    Ok(Submitted::Created(job_id)) => {
                        stats.submitted.fetch_add(1, Ordering::Relaxed);
                        self.track(&job_id, None, true);
                        Reply::Accepted { job_id }
                    }
                    Ok(_) => unavailable(),
                    Err(e) => self.refusal(&e),
                };
                self.answer(to, reply);
            }
            Request::Find { id, reply: to } => {
                let reply = match answer.and_then(functions::parse_find) {
                    Ok(Some(end)) => Reply::Found { job_id: id, end },
                    Ok(None) => Reply::NotFound,
                    Err(e) => self.refusal(&e),
                };
                self.answer(to, reply);
            }
        }
    }

    /// Why a request failed, for its client. Anything but a full queue
    /// means the functions may be gone (a Redis restarted empty, a
    /// `FUNCTION FLUSH`): setup runs again with the next request.
    fn refusal(&mut self, e: &RedisError) -> Reply {
        if e.code() == Some("TOOMANY") {
            return Reply::Refused {
                status: 503,
                code: "too_many_jobs",
                message: format!(
                    "{} jobs are queued or running; retry shortly",
                    self.parts.config.max_jobs
                ),
                retry_after_s: 1,
            };
        }
        log::warn!("jobs: Redis refused a job request: {e}; setting up again");
        self.set_up = false;
        unavailable()
    }

    /// A request that cannot reach Redis now.
    fn refuse(&self, request: Request) {
        let to = match request {
            Request::Summarize { reply, .. }
            | Request::Ask { reply, .. }
            | Request::Find { reply, .. } => reply,
        };
        self.answer(to, unavailable());
    }

    fn answer(&self, to: ConnRef, reply: Reply) {
        if let Some(mailbox) = self.parts.mailboxes.get(to.reactor) {
            mailbox.send(Msg::Job { conn: to, reply });
        }
    }

    /// Follows job `id` until it ends (at most `jobs.max_jobs` jobs; past
    /// that a job runs all the same, its parked requests get their 202).
    fn track(&mut self, id: &str, waiter: Option<ConnRef>, created: bool) {
        let now = self.parts.clock.now_ms();
        let full = self.tracked.len() >= self.parts.config.max_jobs;
        if full && !self.tracked.contains_key(id) {
            return;
        }
        let t = self.tracked.entry(id.to_string()).or_insert(Tracked {
            created,
            since_ms: now,
            waiters: Vec::new(),
            waiters_ms: now,
        });
        t.created |= created;
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
        let read: Result<Vec<Value>, RedisError> = pipe.query(&mut link.con);
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
        let stats = &self.parts.jobs.stats;
        match (t.created, failed) {
            (true, false) => stats.completed.fetch_add(1, Ordering::Relaxed),
            (true, true) => stats.failed.fetch_add(1, Ordering::Relaxed),
            (false, _) => 0,
        };
        if t.waiters.is_empty() {
            return;
        }
        let Some(ending) = ending.or_else(|| self.read_ending(id)) else {
            return;
        };
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

    /// How job `id` ended, if it has and Redis says so now.
    fn read_ending(&mut self, id: &str) -> Option<Ending> {
        if !self.ready() {
            return None;
        }
        let link = self.link.as_mut()?;
        let read = functions::ending_cmd(&self.names, id)
            .query(&mut link.con)
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

/// The answer while Redis cannot be used.
fn unavailable() -> Reply {
    Reply::Refused {
        status: 503,
        code: "redis_unavailable",
        message: "the job queue in Redis cannot be reached; retry shortly".into(),
        retry_after_s: 1,
    }
}
