//! Job requests on a reactor: the request is parked (it reads nothing
//! more) while the job engine answers through the mailbox; a summarize
//! stays parked for its quick-check window and then gets its 202; an ask
//! becomes an SSE stream of the job's channel from its first event.
//!
//! Every way out gives back what the request holds (its per-IP SSE slot),
//! as for the other parked requests (`parked`).

use std::sync::Arc;

use bytes::Bytes;

use super::{Waiting, Worker};
use crate::api::jobs::{JobAsk, JobStart, JobStream};
use crate::api::StreamStart;
use crate::hub::Resume;
use crate::jobs::{Request, JOB_PREFIX};
use crate::mailbox::{ConnRef, JobReply};
use crate::metrics::WorkerStats;
use crate::proto::http::{self, HttpError};

/// How long an ask or a follow may wait for the engine's first answer.
const ENGINE_WAIT_MS: u64 = 5_000;

/// A job request parked on its reactor.
pub struct JobWait {
    pub start: JobStart,
    /// The job, once the engine accepted it (a summarize waiting for its
    /// end).
    pub job_id: Option<String>,
    /// A summarize's quick-check window has passed (or was 0): the 202
    /// goes out as soon as the engine accepts.
    pub window_over: bool,
}

impl Worker {
    /// Parks the request and hands it to the job engine.
    pub(super) fn start_job(&mut self, key: usize, gen: u32, start: JobStart, now: u64) {
        let (reply, owner) = (self.conn_ref(key, gen), start.owner);
        let (request, deadline) = match &start.what {
            JobAsk::Summarize { url, wait_ms } => {
                let url = url.clone();
                let wait = if *wait_ms == 0 {
                    ENGINE_WAIT_MS
                } else {
                    *wait_ms
                };
                (Request::Summarize { url, reply, owner }, now + wait)
            }
            JobAsk::Ask { question, .. } => {
                let question = question.clone();
                let ask = Request::Ask {
                    question,
                    reply,
                    owner,
                };
                (ask, now + ENGINE_WAIT_MS)
            }
            JobAsk::Follow { id, .. } => {
                let id = id.clone();
                (Request::Find { id, reply }, now + ENGINE_WAIT_MS)
            }
        };
        let cap = self.shared.config.jobs.parked_per_reactor;
        if self.parked.len() >= cap || !self.shared.jobs.submit(request) {
            let message = "too many requests wait for the job engine; retry shortly";
            return self.job_refused(key, start, 503, "jobs_busy", message, 1);
        }
        let window_over = matches!(start.what, JobAsk::Summarize { wait_ms: 0, .. });
        let wait = JobWait {
            start,
            job_id: None,
            window_over,
        };
        self.park_until(key, Waiting::Job(wait), deadline);
    }

    /// The job engine answered `conn`.
    pub(super) fn job_answered(&mut self, conn: ConnRef, reply: JobReply) {
        let now = self.now_ms();
        let (key, gen) = (conn.key, conn.gen);
        let waits = |p: &super::Parked| p.gen == gen && matches!(p.what, Waiting::Job(_));
        if !self.parked.get(&key).is_some_and(waits) {
            return;
        }
        if matches!(reply, JobReply::Refused { status: 429, .. }) {
            WorkerStats::add(&self.stats().rejected_jobs_in_flight, 1);
        }
        // A summarize that was accepted waits on, for its result or its
        // window's end.
        if let JobReply::Accepted { job_id } = &reply {
            if let Some(super::Parked {
                what: Waiting::Job(w),
                ..
            }) = self.parked.get_mut(&key)
            {
                if matches!(w.start.what, JobAsk::Summarize { .. }) && !w.window_over {
                    w.job_id = Some(job_id.clone());
                    return;
                }
            }
        }
        let Some(Waiting::Job(wait)) = self.unpark(key, gen) else {
            return;
        };
        self.settle_job(key, wait, reply, now);
    }

    fn settle_job(&mut self, key: usize, wait: JobWait, reply: JobReply, now: u64) {
        let keep_alive = wait.start.keep_alive;
        let stream = match wait.start.what {
            JobAsk::Summarize { .. } => {
                let bytes = summarize_answer(reply, keep_alive);
                return self.answer_parked(key, Bytes::from(bytes), keep_alive, now);
            }
            JobAsk::Ask { stream, .. } | JobAsk::Follow { stream, .. } => stream,
        };
        match reply {
            JobReply::Accepted { job_id } => self.stream_job(key, &job_id, stream, None, now),
            JobReply::Found { job_id, end } => self.stream_job(key, &job_id, stream, end, now),
            JobReply::NotFound => {
                self.shared.access.sse.release(stream.ip_slot);
                let err = HttpError::new(404, "job_not_found", "no such job (or it expired)");
                let bytes = http::error_response(&err, keep_alive, &[]);
                self.answer_parked(key, Bytes::from(bytes), keep_alive, now);
            }
            other => {
                self.shared.access.sse.release(stream.ip_slot);
                let bytes = summarize_answer(other, keep_alive);
                self.answer_parked(key, Bytes::from(bytes), keep_alive, now);
            }
        }
    }

    /// Streams `job:<id>` from the cursor (else from its first event); a
    /// cursor at or past the job's end gets 204 (EventSource stops).
    fn stream_job(&mut self, key: usize, id: &str, s: JobStream, end: Option<u64>, now: u64) {
        if let (Some(end), Some(cursor)) = (end, s.cursor) {
            if cursor >= end {
                self.shared.access.sse.release(s.ip_slot);
                let bytes = http::response(204, "text/event-stream", b"", false, &[]);
                return self.close_gracefully(key, Some(Bytes::from(bytes)), false, now);
            }
        }
        let channel: Arc<str> = Arc::from(format!("{JOB_PREFIX}{id}"));
        let start = StreamStart {
            channels: vec![channel],
            ip_slot: s.ip_slot,
            cursor: Resume::At(s.cursor.unwrap_or(0)),
            composite: false,
            gzip: s.gzip,
            batch: false,
            // Job streams are open in token mode too (see `api::subscribe`).
            grant: None,
        };
        self.start_stream(key, start, now);
    }

    /// The wait ran out: a summarize the engine accepted gets its 202;
    /// anything else a 503.
    pub(super) fn job_timeout(&mut self, key: usize, mut wait: JobWait, now: u64) {
        let keep_alive = wait.start.keep_alive;
        if let Some(job_id) = &wait.job_id {
            let bytes = accepted(job_id, keep_alive);
            return self.answer_parked(key, Bytes::from(bytes), keep_alive, now);
        }
        // The window passed before the engine answered: its answer (202
        // or the summary) goes out when it comes.
        let summarize = matches!(wait.start.what, JobAsk::Summarize { .. });
        if summarize && !wait.window_over {
            wait.window_over = true;
            return self.park_until(key, Waiting::Job(wait), now + ENGINE_WAIT_MS);
        }
        let message = "the job engine did not answer in time; retry shortly";
        self.job_refused(key, wait.start, 503, "jobs_busy", message, 1);
    }

    /// Answers a job request that cannot go on, giving back its slot.
    fn job_refused(
        &mut self,
        key: usize,
        start: JobStart,
        status: u16,
        code: &'static str,
        message: &str,
        retry_after_s: u64,
    ) {
        if let JobAsk::Ask { stream, .. } | JobAsk::Follow { stream, .. } = start.what {
            self.shared.access.sse.release(stream.ip_slot);
        }
        let now = self.now_ms();
        let err = HttpError::new(status, code, message.to_string());
        let extra = [format!("Retry-After: {retry_after_s}")];
        let bytes = http::error_response(&err, start.keep_alive, &extra);
        self.answer_parked(key, Bytes::from(bytes), start.keep_alive, now);
    }
}

/// Gives back what a parked job request holds.
pub(super) fn release_job(worker: &Worker, wait: JobWait) {
    if let JobAsk::Ask { stream, .. } | JobAsk::Follow { stream, .. } = wait.start.what {
        worker.shared.access.sse.release(stream.ip_slot);
    }
}

/// The 202 of a summarize whose job runs on.
fn accepted(job_id: &str, keep_alive: bool) -> Vec<u8> {
    let stream = format!("/api/ask?job={job_id}");
    let body = serde_json::json!({"jobId": job_id, "status": "pending", "stream": stream});
    let location = [format!("Location: {stream}")];
    http::response(
        202,
        "application/json",
        body.to_string().as_bytes(),
        keep_alive,
        &location,
    )
}

/// The answer to a summarize (or a refused job request).
fn summarize_answer(reply: JobReply, keep_alive: bool) -> Vec<u8> {
    let (status, body, extra) = match reply {
        JobReply::Summary {
            url,
            summary,
            job_id,
            cached,
        } => {
            let body = serde_json::json!({
                "url": url, "summary": summary, "jobId": job_id, "cached": cached,
            });
            (200, body, Vec::new())
        }
        JobReply::Accepted { job_id } => return accepted(&job_id, keep_alive),
        JobReply::Failed {
            job_id,
            code,
            message,
        } => {
            let body = serde_json::json!({
                "error": {"code": code, "message": message}, "jobId": job_id,
            });
            (502, body, Vec::new())
        }
        JobReply::Refused {
            status,
            code,
            message,
            retry_after_s,
        } => {
            let err = HttpError::new(status, code, message);
            let extra = [format!("Retry-After: {retry_after_s}")];
            return http::error_response(&err, keep_alive, &extra);
        }
        JobReply::Found { .. } | JobReply::NotFound => {
            let err = HttpError::new(500, "internal", "unexpected job engine answer");
            return http::error_response(&err, keep_alive, &[]);
        }
    };
    let text = body.to_string();
    http::response(
        status,
        "application/json",
        text.as_bytes(),
        keep_alive,
        &extra,
    )
}
