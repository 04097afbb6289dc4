//! The engine's answers to requests: a batch as one pipeline (each its
//! own command and answer). A request that may create a job holds one of
//! its client's slots of jobs in flight while it is in Redis's hands
//! (`owners`), so the batch's later requests see it; the slot stays with
//! the job if one was created, else it is given back.

use std::sync::atomic::Ordering;

use redis::{RedisError, Value};

use super::cluster;
use super::functions::{self, Submit, Submitted};
use super::Engine;
use crate::bridge::wire::link_failed;
use crate::jobs::owners::RETRY_AFTER_S;
use crate::jobs::{new_id, Kind, Reply, Request};
use crate::mailbox::{ConnRef, Msg};

/// One reply of a pipeline.
type Answer = Result<Value, RedisError>;

impl Engine {
    /// Answers a batch of requests: one pipeline (Redis Cluster: one
    /// request after the other), or 503 at once when Redis cannot be used.
    pub(super) fn handle(&mut self, batch: Vec<Request>) {
        if !self.ready() {
            return batch.into_iter().for_each(|r| self.refuse(r));
        }
        let mut held = Vec::with_capacity(batch.len());
        let answers = match self.names.is_cluster() {
            true => self.one_by_one(&batch, &mut held),
            false => self.pipelined(&batch, &mut held),
        };
        let answers = match answers {
            Ok(answers) if answers.len() == batch.len() => answers,
            broken => {
                if let Err(e) = broken {
                    self.failed("job requests", &e);
                }
                let unanswered = batch.len();
                let errors = (0..unanswered).map(|_| Err(gone()));
                return self.settle_all(batch, held, errors.collect());
            }
        };
        self.settle_all(batch, held, answers);
    }

    /// The batch as one pipeline, each request its own command and answer.
    fn pipelined(
        &mut self,
        batch: &[Request],
        held: &mut Vec<bool>,
    ) -> Result<Vec<Answer>, RedisError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for request in batch {
            let (cmd, slot) = match request {
                Request::Find { id, .. } => (functions::find_cmd(&self.names, id), false),
                _ => {
                    let (id, may_create) = self.prepare(request);
                    let submit = submit_of(request, &id, may_create);
                    let max = self.parts.config.max_jobs;
                    (functions::submit_cmd(&self.names, &submit, max), may_create)
                }
            };
            pipe.add_command(cmd);
            held.push(slot);
        }
        match self.link.as_mut() {
            Some(link) => pipe.query(link.con.as_mut()),
            None => Ok(Vec::new()),
        }
    }

    /// Redis Cluster: each request in turn, its commands routed by key.
    /// A failed link stops the batch: the requests after it are answered
    /// 503 (those before keep their answers: their jobs exist).
    fn one_by_one(
        &mut self,
        batch: &[Request],
        held: &mut Vec<bool>,
    ) -> Result<Vec<Answer>, RedisError> {
        let mut answers = Vec::with_capacity(batch.len());
        for request in batch {
            let (id, may_create) = self.prepare(request);
            held.push(may_create);
            let Some(link) = self.link.as_mut() else {
                answers.push(Err(gone()));
                continue;
            };
            let answer = match request {
                Request::Find { id, .. } => {
                    functions::find_cmd(&self.names, id).query(link.con.as_mut())
                }
                _ => {
                    let submit = submit_of(request, &id, may_create);
                    let (names, settings) = (&self.names, &self.settings);
                    let max = self.parts.config.max_jobs;
                    cluster::reloading(link.con.as_mut(), names, settings, |con| {
                        cluster::submit(con, names, &submit, settings, max)
                    })
                }
            };
            if let Err(e) = &answer {
                if link_failed(e) {
                    self.failed("job requests", e);
                }
            }
            answers.push(answer);
        }
        Ok(answers)
    }

    /// A new job's id, and whether the request holds one of its client's
    /// slots (it may create the job).
    fn prepare(&mut self, request: &Request) -> (String, bool) {
        let owner = match request {
            Request::Summarize { owner, .. } | Request::Ask { owner, .. } => *owner,
            Request::Find { .. } => return (String::new(), false),
        };
        let cap = self.parts.jobs.in_flight_cap();
        let may_create = self.in_flight.admit(owner, cap).is_ok();
        if may_create {
            self.in_flight.add(owner);
        }
        (new_id(), may_create)
    }

    fn settle_all(&mut self, batch: Vec<Request>, held: Vec<bool>, answers: Vec<Answer>) {
        for ((request, held), answer) in batch.into_iter().zip(held).zip(answers) {
            self.settle(request, held, answer);
        }
    }

    fn settle(&mut self, request: Request, held: bool, answer: Answer) {
        let (to, reply) = match request {
            Request::Summarize { url, reply, owner } => {
                let submitted = self.submitted(answer, owner, held);
                (reply, self.summarize_reply(url, reply, owner, submitted))
            }
            Request::Ask { reply, owner, .. } => {
                let reply_to = reply;
                let reply = match self.submitted(answer, owner, held) {
                    Ok(Submitted::Created(job_id)) => self.created(&job_id, None, owner),
                    Ok(Submitted::Capped) => self.capped(owner),
                    Ok(_) => unavailable(),
                    Err(e) => self.refusal(&e),
                };
                (reply_to, reply)
            }
            Request::Find { id, reply } => {
                let found = match answer.and_then(functions::parse_find) {
                    Ok(Some(end)) => Reply::Found { job_id: id, end },
                    Ok(None) => Reply::NotFound,
                    Err(e) => self.refusal(&e),
                };
                (reply, found)
            }
        };
        self.answer(to, reply);
    }

    /// A submission's outcome; the slot it held goes back unless it made
    /// a job.
    fn submitted(
        &mut self,
        answer: Answer,
        owner: u64,
        held: bool,
    ) -> Result<Submitted, RedisError> {
        let submitted = answer.and_then(functions::parse_submit);
        if held && !matches!(submitted, Ok(Submitted::Created(_))) {
            self.in_flight.release(owner);
        }
        submitted
    }

    fn summarize_reply(
        &mut self,
        url: String,
        to: ConnRef,
        owner: u64,
        submitted: Result<Submitted, RedisError>,
    ) -> Reply {
        let stats = &self.parts.jobs.stats;
        match submitted {
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
                self.track(&job_id, Some(to), None);
                Reply::Accepted { job_id }
            }
            Ok(Submitted::Created(job_id)) => {
                let reply = self.created(&job_id, Some(to), owner);
                if let Some(t) = self.tracked.get_mut(&job_id) {
                    t.url = Some(url);
                }
                reply
            }
            Ok(Submitted::Capped) => self.capped(owner),
            Err(e) => self.refusal(&e),
        }
    }

    /// A job this node created for `owner` (who holds a slot for it).
    fn created(&mut self, job_id: &str, waiter: Option<ConnRef>, owner: u64) -> Reply {
        let stats = &self.parts.jobs.stats;
        stats.submitted.fetch_add(1, Ordering::Relaxed);
        self.track(job_id, waiter, Some(owner));
        Reply::Accepted {
            job_id: job_id.to_string(),
        }
    }

    /// The 429 of a client at its cap of jobs in flight.
    fn capped(&self, owner: u64) -> Reply {
        let cap = self.parts.jobs.in_flight_cap();
        match self.in_flight.admit(owner, cap) {
            Err(refused) => refused,
            // A job of its ended since: the client may simply retry.
            Ok(()) => Reply::Refused {
                status: 429,
                code: "too_many_jobs",
                message: "this client had limits.jobs_in_flight jobs in flight; retry".into(),
                retry_after_s: RETRY_AFTER_S,
            },
        }
    }

    /// Why a request failed, for its client. Anything but a full queue
    /// means the functions may be gone (a Redis restarted empty, a
    /// `FUNCTION FLUSH`): setup runs again with the next request.
    fn refusal(&mut self, e: &RedisError) -> Reply {
        if e.code() == Some("TOOMANY") {
            return Reply::Refused {
                status: 503,
                code: "jobs_full",
                message: format!(
                    "{} jobs of this kind are queued or running; retry shortly",
                    self.parts.config.max_jobs
                ),
                retry_after_s: 1,
            };
        }
        if !link_failed(e) {
            log::warn!("jobs: Redis refused a job request: {e}; setting up again");
            self.set_up = false;
        }
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

    pub(super) fn answer(&self, to: ConnRef, reply: Reply) {
        if let Some(mailbox) = self.parts.mailboxes.get(to.reactor) {
            mailbox.send(Msg::Job { conn: to, reply });
        }
    }
}

/// What a summarize or ask request submits.
fn submit_of<'a>(request: &'a Request, id: &'a str, may_create: bool) -> Submit<'a> {
    let (kind, input) = match request {
        Request::Summarize { url, .. } => (Kind::Summarize, url.as_str()),
        Request::Ask { question, .. } => (Kind::Ask, question.as_str()),
        Request::Find { id, .. } => (Kind::Ask, id.as_str()),
    };
    Submit {
        kind,
        input,
        id,
        may_create,
    }
}

/// A request the pipeline did not answer (the link failed under it).
fn gone() -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "the Redis link failed"))
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
