//! Per-client budgets of the endpoints that cost the node real work: new
//! jobs (`limits.jobs_per_min` here, `limits.jobs_in_flight` in the job
//! engine, which knows when a job ends) and publishes
//! (`limits.publishes_per_sec`).
//!
//! A client is its API key when the request carries a configured one,
//! wherever it comes from (a key shared by many hosts is one budget);
//! else its IP (the peer, or what a trusted proxy forwarded). A client on
//! this machine without a key is exempt, as from `limits.requests_per_sec`:
//! it is the operator, or a local service whose own clients must be named
//! through a trusted proxy's `X-Forwarded-For`. Benchmarks and tests that
//! publish thousands a second from loopback are therefore never slowed.

use super::answers::Reject;
use super::{client_key, is_local, Ctx};
use crate::limits::{ClientKey, RateLimiter};
use crate::metrics::WorkerStats;
use crate::proto::http::Head;

/// Who the request counts against; `None` for nobody (exempt).
pub(super) fn client(head: &Head, ctx: &Ctx<'_>) -> Option<ClientKey> {
    if let Some(id) = ctx.shared.access.keys().identify(head.credential()) {
        return Some(ClientKey::ApiKey(id));
    }
    (!is_local(head, ctx)).then(|| ClientKey::Ip(client_key(head, ctx)))
}

/// The client as the job engine counts it (`jobs::Request`'s `owner`):
/// 0 is nobody, never counted.
pub(super) fn owner(who: Option<ClientKey>) -> u64 {
    who.map_or(0, ClientKey::owner_id)
}

/// Takes a token from the client's budget of new jobs.
pub(super) fn charge_job(ctx: &Ctx<'_>, who: Option<ClientKey>) -> Result<(), Reject> {
    let (limiter, counter) = (&ctx.shared.access.jobs, &ctx.stats.rejected_job_rate);
    charge(
        ctx,
        limiter,
        counter,
        who,
        "creates jobs faster than limits.jobs_per_min allows",
    )
}

/// Takes a token from the client's budget of publishes.
pub(super) fn charge_publish(ctx: &Ctx<'_>, who: Option<ClientKey>) -> Result<(), Reject> {
    let (limiter, counter) = (
        &ctx.shared.access.publishes,
        &ctx.stats.rejected_publish_rate,
    );
    charge(
        ctx,
        limiter,
        counter,
        who,
        "publishes faster than limits.publishes_per_sec allows",
    )
}

/// 429 `rate_limited` with the seconds until a token is back.
fn charge(
    ctx: &Ctx<'_>,
    limiter: &RateLimiter<ClientKey>,
    counter: &std::sync::atomic::AtomicU64,
    who: Option<ClientKey>,
    what: &str,
) -> Result<(), Reject> {
    let Some(who) = who else {
        return Ok(());
    };
    limiter.check(who, ctx.shared.now_ms()).map_err(|secs| {
        WorkerStats::add(counter, 1);
        let client = match who {
            ClientKey::ApiKey(_) => "this API key",
            ClientKey::Ip(_) => "this client IP",
        };
        Reject::new(429, "rate_limited", format!("{client} {what}"))
            .with_header(format!("Retry-After: {secs}"))
    })
}
