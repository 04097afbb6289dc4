//! Who may open a stream: the `Origin` allowlist (`auth.allowed_origins`,
//! for SSE, job streams and WebSockets alike) and, with `auth.subscribe =
//! "token"`, a subscription token (`?token=` or `Authorization: Bearer`)
//! whose channel patterns cover every channel asked for, and a place under
//! its subject's connection cap, taken before the stream starts.
//!
//! Job streams (`/api/ask`) need no token: they name one job by an
//! unguessable id, not a channel, and the job API has limits of its own.

use std::sync::Arc;

use super::answers::Reject;
use super::Ctx;
use crate::metrics::WorkerStats;
use crate::proto::http::{query_param, Head};
use crate::tokens::{unix_now_ms, Grant, SubjectSlot};

/// 403 `origin_not_allowed` for a browser whose page is not listed.
pub(super) fn check_origin(head: &Head, ctx: &Ctx<'_>) -> Result<(), Reject> {
    if ctx
        .shared
        .access
        .policy()
        .origin_allowed(head.origin.as_deref())
    {
        return Ok(());
    }
    WorkerStats::add(&ctx.stats.rejected_origin, 1);
    Err(Reject::new(
        403,
        "origin_not_allowed",
        "this Origin may not open streams here (auth.allowed_origins)",
    ))
}

/// The token a request presents: `?token=` (all an `EventSource` or a
/// browser WebSocket can send) or `Authorization: Bearer`.
fn presented(head: &Head) -> Option<String> {
    if let Some(t) = query_param(&head.query, "token").filter(|t| !t.is_empty()) {
        return Some(t);
    }
    let auth = head.authorization.as_deref()?;
    let (scheme, rest) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_string())
}

/// In token mode, the checked grant of the request's token for
/// `channels`, holding a place under its subject's cap: 401 without a
/// valid token, 403 `channel_not_allowed` naming the first channel it
/// does not cover, 429 when the subject holds its cap. `None` in open mode.
pub(super) fn admit(
    head: &Head,
    ctx: &Ctx<'_>,
    channels: &[Arc<str>],
) -> Result<Option<Box<Grant>>, Reject> {
    let policy = ctx.shared.access.policy();
    if !policy.required() {
        return Ok(None);
    }
    let refused = |code, message: String| {
        WorkerStats::add(&ctx.stats.rejected_token, 1);
        Err(Reject::new(401, code, message).with_header("WWW-Authenticate: Bearer".into()))
    };
    let Some(token) = presented(head) else {
        return refused(
            "token_required",
            "subscribing needs a token: ?token=JWT or Authorization: Bearer JWT".into(),
        );
    };
    let mut grant = match policy.verify(&token, unix_now_ms()) {
        Ok(grant) => Box::new(grant),
        Err(e) => return refused("bad_token", e.to_string()),
    };
    drop(policy);
    if let Some(ch) = channels.iter().find(|c| !grant.allows(c)) {
        WorkerStats::add(&ctx.stats.rejected_channel, 1);
        return Err(Reject::new(
            403,
            "channel_not_allowed",
            format!("the token does not allow channel {}", ch),
        ));
    }
    let access = &ctx.shared.access;
    let Some(slot) = SubjectSlot::take(&access.subjects, grant.subject) else {
        WorkerStats::add(&ctx.stats.rejected_subject_limit, 1);
        return Err(Reject::new(
            429,
            "too_many_connections",
            format!(
                "at most {} streams and WebSockets per token subject",
                access.subjects.max()
            ),
        )
        .with_header("Retry-After: 5".into()));
    };
    grant.hold(slot);
    Ok(Some(grant))
}
