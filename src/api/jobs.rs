//! `POST /api/summarize` and `GET /api/ask`: checked here, then handed to
//! the reactor as an [`Action::Job`], which parks the request and asks the
//! job engine (see `jobs`). Nothing here waits.

use serde::Deserialize;

use super::answers::Reject;
use super::{quota, stream_cursor, take_slot, Action, Ctx};
use crate::jobs::valid_id;
use crate::limits::IpKey;
use crate::proto::gzip;
use crate::proto::http::{query_param, Head};

/// URLs and questions are at most this long.
pub const MAX_INPUT: usize = 2048;

/// A job request the reactor carries out.
#[derive(Debug)]
pub struct JobStart {
    pub what: JobAsk,
    pub keep_alive: bool,
    /// Who a new job counts against in the engine's jobs in flight per
    /// client (`limits.jobs_in_flight`); 0 for nobody (an exempt client,
    /// or a follow, which makes no job).
    pub owner: u64,
}

#[derive(Debug)]
pub enum JobAsk {
    /// The summary within `wait_ms`, else 202 with the job to follow.
    Summarize { url: String, wait_ms: u64 },
    /// A new ask job, streamed.
    Ask { question: String, stream: JobStream },
    /// An existing job, streamed from `stream.cursor` (else from its
    /// first event).
    Follow { id: String, stream: JobStream },
}

/// The SSE stream a job request becomes: it holds a per-IP SSE slot.
#[derive(Debug)]
pub struct JobStream {
    pub ip_slot: IpKey,
    pub cursor: Option<u64>,
    pub gzip: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SummarizeBody {
    url: String,
}

pub(super) fn summarize(head: &Head, body: &[u8], ctx: &Ctx<'_>) -> Result<Action, Reject> {
    let req: SummarizeBody = serde_json::from_slice(body).map_err(|e| {
        Reject::new(
            400,
            "bad_json",
            format!("give {{\"url\":\"https://…\"}}: {e}"),
        )
    })?;
    check_url(&req.url).map_err(|m| Reject::new(400, "bad_url", m))?;
    let cfg = &ctx.shared.config.jobs;
    let wait_ms = match query_param(&head.query, "wait") {
        None => cfg.wait_ms,
        Some(raw) => parse_wait(&raw, cfg.max_wait_ms).ok_or_else(|| {
            Reject::new(
                400,
                "bad_wait",
                format!("?wait= is seconds from 0 to {}", cfg.max_wait_ms / 1000),
            )
        })?,
    };
    let owner = admit_new_job(head, ctx)?;
    Ok(Action::Job(JobStart {
        what: JobAsk::Summarize {
            url: req.url,
            wait_ms,
        },
        keep_alive: head.keep_alive,
        owner,
    }))
}

pub(super) fn ask(head: &Head, ctx: &Ctx<'_>) -> Result<Action, Reject> {
    super::subscribe::check_origin(head, ctx)?;
    let question = query_param(&head.query, "q");
    let job = query_param(&head.query, "job");
    match (question, job) {
        (Some(q), None) => new_ask(head, ctx, q.trim()),
        (None, Some(id)) if valid_id(&id) => {
            let stream = job_stream(head, ctx)?;
            Ok(follow(head, id, stream))
        }
        (None, Some(_)) => Err(Reject::new(400, "bad_job", "?job= is a job id")),
        _ => Err(Reject::new(
            400,
            "bad_request",
            "give ?q=QUESTION (a new job) or ?job=ID (follow one)",
        )),
    }
}

fn new_ask(head: &Head, ctx: &Ctx<'_>, question: &str) -> Result<Action, Reject> {
    if question.is_empty() || question.len() > MAX_INPUT {
        return Err(Reject::new(
            400,
            "bad_question",
            format!("?q= is 1 to {MAX_INPUT} bytes"),
        ));
    }
    let owner = admit_new_job(head, ctx)?;
    let stream = job_stream(head, ctx)?;
    Ok(Action::Job(JobStart {
        what: JobAsk::Ask {
            question: question.to_string(),
            stream,
        },
        keep_alive: false,
        owner,
    }))
}

fn follow(head: &Head, id: String, stream: JobStream) -> Action {
    Action::Job(JobStart {
        what: JobAsk::Follow { id, stream },
        keep_alive: head.keep_alive,
        owner: 0,
    })
}

/// A request that may create a job: the client's job rate first (a
/// refused request must not spend the half-open breaker's one probe),
/// then the breaker. Answers the client's owner id for the engine.
fn admit_new_job(head: &Head, ctx: &Ctx<'_>) -> Result<u64, Reject> {
    let who = quota::client(head, ctx);
    quota::charge_job(ctx, who)?;
    admit(ctx)?;
    Ok(quota::owner(who))
}

/// The cursor and the per-IP SSE slot a job stream holds.
fn job_stream(head: &Head, ctx: &Ctx<'_>) -> Result<JobStream, Reject> {
    let cursor = stream_cursor(head, ctx)?;
    let ip_slot = take_slot(head, ctx, &ctx.shared.access.sse, "SSE streams")?;
    Ok(JobStream {
        ip_slot,
        cursor,
        gzip: gzip::accepts(head.accept_encoding.as_deref()),
    })
}

/// The breaker: 503 at once while workers make no progress.
fn admit(ctx: &Ctx<'_>) -> Result<(), Reject> {
    let jobs = &ctx.shared.jobs;
    if jobs.breaker.admit(ctx.shared.now_ms()) {
        return Ok(());
    }
    let retry = crate::jobs::Breaker::retry_after_s(&ctx.shared.config.jobs);
    Err(Reject::new(
        503,
        "jobs_unavailable",
        "workers are not picking up jobs; retry later",
    )
    .with_header(format!("Retry-After: {retry}")))
}

/// An http or https URL of at most [`MAX_INPUT`] bytes with a host.
fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_INPUT {
        return Err(format!("url is {} bytes; at most {MAX_INPUT}", url.len()));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("url must start with http:// or https://")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() {
        return Err("url has no host".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("url has spaces or control characters".into());
    }
    Ok(())
}

/// `?wait=` seconds (a decimal is fine) as ms, at most `max_ms`.
fn parse_wait(raw: &str, max_ms: u64) -> Option<u64> {
    let secs: f64 = raw.trim().parse().ok()?;
    let ms = (secs * 1000.0).round();
    (secs.is_finite() && (0.0..=max_ms as f64).contains(&ms)).then_some(ms as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://example.com/a?b=c").is_ok());
        assert!(check_url("http://h").is_ok());
        assert!(check_url("ftp://h").unwrap_err().contains("http://"));
        assert!(check_url("https://").unwrap_err().contains("host"));
        assert!(check_url("https://h/a b").is_err());
        let long = format!("https://h/{}", "a".repeat(MAX_INPUT));
        assert!(check_url(&long).unwrap_err().contains("at most"));
    }

    #[test]
    fn waits_are_seconds_within_the_cap() {
        assert_eq!(parse_wait("0", 10_000), Some(0));
        assert_eq!(parse_wait("2.5", 10_000), Some(2500));
        assert_eq!(parse_wait("10", 10_000), Some(10_000));
        assert_eq!(parse_wait("11", 10_000), None);
        assert_eq!(parse_wait("-1", 10_000), None);
        assert_eq!(parse_wait("NaN", 10_000), None);
        assert_eq!(parse_wait("x", 10_000), None);
    }
}
