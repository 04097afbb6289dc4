//! Routing and the plain HTTP endpoints. A handler sees a parsed head, the
//! body and the shared state, and answers with an [`Action`]; it never
//! touches a socket. Streams are started by the reactor from
//! [`Action::Stream`].

use std::net::IpAddr;
use std::sync::Arc;

pub mod admin;
pub mod answers;
mod assets;
pub mod jobs;
mod ops;
mod quota;
mod subscribe;
pub mod ws;

use serde::Deserialize;

use crate::auth::Denied;
use crate::config::Scope;
use crate::hub::{check_channel, cursor, Resume, MARKET_PREFIX};
use crate::limits::{client_ip, is_trusted, IpKey, IpLimiter};
use crate::link::Publish;
use crate::metrics::WorkerStats;
use crate::proto::deflate::{self, Agreement};
use crate::proto::gzip;
use crate::proto::http::{query_param, Head, Method};
use crate::proto::ws as wsproto;
use crate::state::Shared;
use crate::tokens::Grant;
use answers::{json_ok, publish_ok, Reject};

/// What the reactor should do with a request.
#[derive(Debug)]
pub enum Action {
    /// Queue these bytes; close after them when `close`.
    Respond { bytes: Vec<u8>, close: bool },
    /// Turn the connection into an SSE stream. The stream holds a per-IP
    /// slot that the reactor releases when it closes.
    Stream(StreamStart),
    /// Send `response` (the 101) and speak WebSocket from then on. Holds a
    /// per-IP WebSocket slot.
    Upgrade(Upgrade),
    /// Redis mode: hand the publish to the Redis bridge and answer when it
    /// is done.
    Publish { publish: Publish, keep_alive: bool },
    /// Ask the job engine; answer (or stream) when it replies.
    Job(jobs::JobStart),
    /// Ask every reactor (the admin API); answer when they replied.
    Admin(admin::AdminStart),
}

#[derive(Debug)]
pub struct StreamStart {
    pub channels: Vec<Arc<str>>,
    pub ip_slot: IpKey,
    /// Where to resume (`Last-Event-ID` or `lastEventId`): after one id,
    /// or (a composite cursor) after a position per channel.
    pub cursor: Resume,
    /// Redis Cluster mode, several channels: events carry a composite
    /// cursor, and `channels` are in its canonical (sorted) order.
    pub composite: bool,
    /// The client accepts gzip: encode the stream.
    pub gzip: bool,
    /// `?batch=1`: hold writes for the batch window.
    pub batch: bool,
    /// Token mode: what the token allows, until when; holds the place
    /// under its subject's cap.
    pub grant: Option<Box<Grant>>,
}

#[derive(Debug)]
pub struct Upgrade {
    pub response: Vec<u8>,
    pub deflate: Option<Agreement>,
    pub ip_slot: IpKey,
    /// `/ws/echo`: echo every message instead of speaking the JSON protocol.
    pub echo: bool,
    /// `?batch=1`: events arrive in `{"type":"batch"}` frames.
    pub batch: bool,
    /// Token mode: the grant each subscribe is checked against.
    pub grant: Option<Box<Grant>>,
}

/// Per-request context.
pub struct Ctx<'a> {
    pub shared: &'a Shared,
    /// The TCP peer (not the forwarded client).
    pub peer: IpAddr,
    /// Counters of the reactor handling the request.
    pub stats: &'a WorkerStats,
}

pub fn handle(head: &Head, body: &[u8], ctx: &Ctx<'_>) -> Action {
    if let Err(reject) = rate_limit(head, ctx) {
        return reject.into_action(head);
    }
    let result = match head.path.as_str() {
        "/api/stream" => only(head, Method::Get).and_then(|_| stream(head, ctx)),
        "/ws" => upgrade(head, ctx, false),
        "/ws/echo" if ctx.shared.config.debug.ws_echo => upgrade(head, ctx, true),
        "/api/publish" => only(head, Method::Post).and_then(|_| publish(head, body, ctx)),
        "/api/summarize" => only(head, Method::Post).and_then(|_| jobs::summarize(head, body, ctx)),
        "/api/ask" => only(head, Method::Get).and_then(|_| jobs::ask(head, ctx)),
        "/readyz" => only(head, Method::Get).and_then(|_| ops::ready(head, ctx)),
        "/healthz" => only(head, Method::Get).map(|_| json_ok(head, r#"{"status":"ok"}"#.into())),
        "/metrics/prom" => only(head, Method::Get).map(|_| ops::metrics(head, ctx)),
        "/debug/wedge" if ctx.shared.config.debug.wedge => only(head, Method::Post)
            .and_then(|_| authorize(head, ctx, Scope::Admin))
            .map(|_| ops::wedge(head)),
        "/debug/fds" => only(head, Method::Get)
            .and_then(|_| authorize(head, ctx, Scope::Admin))
            .map(|_| ops::fds(head)),
        "/api/admin/disconnect" => only(head, Method::Post)
            .and_then(|_| authorize(head, ctx, Scope::Admin))
            .and_then(|_| admin::disconnect(head, body, ctx)),
        "/debug/connections" => only(head, Method::Get)
            .and_then(|_| authorize(head, ctx, Scope::Admin))
            .and_then(|_| admin::connections(head)),
        "/debug/leak-fd" if ctx.shared.config.debug.test_hooks => only(head, Method::Post)
            .and_then(|_| authorize(head, ctx, Scope::Admin))
            .and_then(|_| ops::leak_fd(head)),
        path => match assets::asset(path) {
            Some((kind, body)) => only(head, Method::Get).map(|_| assets::serve(head, kind, body)),
            None => Err(Reject::new(
                404,
                "not_found",
                format!("no route for {}", head.path),
            )),
        },
    };
    result.unwrap_or_else(|r| r.into_action(head))
}

fn only(head: &Head, method: Method) -> Result<(), Reject> {
    if head.method() == method {
        return Ok(());
    }
    let allow = match method {
        Method::Post => "POST",
        _ => "GET",
    };
    Err(Reject::new(
        405,
        "method_not_allowed",
        format!("{} takes {allow}", head.path),
    )
    .with_header(format!("Allow: {allow}")))
}

/// Whether the client is this machine: the client IP (the peer, or what
/// a trusted proxy forwarded) is loopback, and no proxy we do not know
/// forwarded the request (a reverse proxy on this host would make every
/// internet client look local).
fn is_local(head: &Head, ctx: &Ctx<'_>) -> bool {
    let trusted = &ctx.shared.config.limits.trusted_proxies;
    let proxied = head.forwarded_for.is_some() || head.forwarded;
    if proxied && !is_trusted(ctx.peer, trusted) {
        return false;
    }
    client_ip(ctx.peer, head.forwarded_for.as_deref(), trusted).is_loopback()
}

fn authorize(head: &Head, ctx: &Ctx<'_>, scope: Scope) -> Result<(), Reject> {
    let local = is_local(head, ctx);
    match ctx
        .shared
        .access
        .keys()
        .check(scope, head.credential(), local)
    {
        Ok(()) => Ok(()),
        Err(Denied::Unauthenticated) => Err(Reject::new(
            401,
            "unauthorized",
            "send an API key as `Authorization: Bearer KEY` or `X-API-Key`",
        )
        .with_header("WWW-Authenticate: Bearer".into())),
        Err(Denied::Forbidden) => Err(Reject::new(
            403,
            "forbidden",
            match ctx.shared.access.keys().any_configured() {
                true => "this key lacks the scope for this endpoint",
                false => "no API key is configured: only clients on this machine may use this endpoint, and requests a proxy forwards do not count as such; configure auth.keys (or list the proxy in limits.trusted_proxies)",
            },
        )),
    }
}

/// The per-client request rate. Monitoring endpoints, local clients (see
/// [`is_local`]) and requests with a valid API key are not limited.
fn rate_limit(head: &Head, ctx: &Ctx<'_>) -> Result<(), Reject> {
    if matches!(head.path.as_str(), "/healthz" | "/readyz" | "/metrics/prom") {
        return Ok(());
    }
    let trusted = &ctx.shared.config.limits.trusted_proxies;
    let ip = client_ip(ctx.peer, head.forwarded_for.as_deref(), trusted);
    if is_local(head, ctx) {
        return Ok(());
    }
    let keys = ctx.shared.access.keys();
    let keyed = [Scope::Publish, Scope::Admin]
        .iter()
        .any(|s| keys.any_configured() && keys.check(*s, head.credential(), false).is_ok());
    if keyed {
        return Ok(());
    }
    let now = ctx.shared.now_ms();
    ctx.shared
        .access
        .requests
        .check(IpKey::of(ip), now)
        .map_err(|secs| {
            WorkerStats::add(&ctx.stats.rejected_rate_limit, 1);
            Reject::new(429, "rate_limited", "too many requests from this client IP")
                .with_header(format!("Retry-After: {secs}"))
        })
}

fn stream(head: &Head, ctx: &Ctx<'_>) -> Result<Action, Reject> {
    let shared = ctx.shared;
    subscribe::check_origin(head, ctx)?;
    let raw = query_param(&head.query, "channels").ok_or_else(|| {
        Reject::new(
            400,
            "bad_request",
            "give the channels to stream: ?channels=a,b",
        )
    })?;
    let mut channels: Vec<Arc<str>> = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        check_channel(name).map_err(|m| Reject::new(400, "bad_channel", m))?;
        if !channels.iter().any(|c| &**c == name) {
            channels.push(Arc::from(name));
        }
    }
    let max = shared.config.sse.max_channels;
    if channels.is_empty() || channels.len() > max {
        return Err(Reject::new(
            400,
            "bad_request",
            format!("name 1 to {max} channels"),
        ));
    }
    // Redis Cluster: each channel has its own ids, so a stream over
    // several carries a composite cursor, in one canonical channel order.
    let composite = channels.len() > 1 && shared.config.redis.is_cluster();
    if composite {
        channels.sort_unstable();
    }
    let cursor = match composite {
        true => composite_cursor(head, &channels)?,
        false => stream_cursor(head, ctx)?.map_or(Resume::Fresh, Resume::At),
    };
    let grant = subscribe::admit(head, ctx, &channels)?;
    charge_new_channels(ctx, client_key(head, ctx), &channels)?;
    let key = take_slot(head, ctx, &shared.access.sse, "SSE streams")?;
    Ok(Action::Stream(StreamStart {
        channels,
        ip_slot: key,
        cursor,
        composite,
        // A composite stream's events differ per stream: not compressed.
        gzip: !composite && gzip::accepts(head.accept_encoding.as_deref()),
        batch: wants_batch(head, ctx),
        grant,
    }))
}

fn upgrade(head: &Head, ctx: &Ctx<'_>, echo: bool) -> Result<Action, Reject> {
    let shared = ctx.shared;
    let accept = wsproto::check_upgrade(
        head.method() == Method::Get,
        head.upgrade.as_deref(),
        head.connection_upgrade,
        head.ws_version.as_deref(),
        head.ws_key.as_deref(),
    )
    .map_err(|e| {
        let mut r = Reject::new(e.status(), "bad_upgrade", e.to_string());
        r.extra = e.headers().iter().map(|h| h.to_string()).collect();
        r
    })?;
    let origins = &shared.config.ws.allowed_origins;
    if !origins.is_empty() && !head.origin.as_ref().is_some_and(|o| origins.contains(o)) {
        WorkerStats::add(&ctx.stats.rejected_origin, 1);
        return Err(Reject::new(
            403,
            "origin_not_allowed",
            "this Origin may not open WebSockets here",
        ));
    }
    subscribe::check_origin(head, ctx)?;
    let grant = match echo {
        true => None,
        false => subscribe::admit(head, ctx, &[])?,
    };
    let key = take_slot(head, ctx, &shared.access.ws, "WebSockets")?;
    let deflate = match shared.config.ws.deflate {
        true => deflate::negotiate(head.ws_extensions.as_deref()),
        false => None,
    };
    let ext = deflate.map(|a| a.response_header());
    Ok(Action::Upgrade(Upgrade {
        response: wsproto::accept_response(&accept, ext.as_deref()),
        deflate,
        ip_slot: key,
        echo,
        batch: wants_batch(head, ctx),
        grant,
    }))
}

/// Takes a per-client-IP slot for a long-lived connection; refused (503)
/// while shutting down and (429) at the limit.
fn take_slot(head: &Head, ctx: &Ctx<'_>, limiter: &IpLimiter, what: &str) -> Result<IpKey, Reject> {
    if ctx.shared.is_shutting_down() {
        return Err(Reject::new(
            503,
            "shutting_down",
            "this node is shutting down; reconnect",
        )
        .with_header("Retry-After: 1".into()));
    }
    let key = client_key(head, ctx);
    if !limiter.acquire(key) {
        WorkerStats::add(&ctx.stats.rejected_ip_limit, 1);
        return Err(Reject::new(
            429,
            "too_many_connections",
            format!("at most {} {what} per client IP", limiter.max()),
        )
        .with_header("Retry-After: 5".into()));
    }
    Ok(key)
}

/// Charges the client IP's budget of new channels for those of
/// `channels` nobody here listens to yet (each would cost a hub entry, and
/// in Redis mode a SUBSCRIBE and a history load).
fn charge_new_channels(ctx: &Ctx<'_>, ip: IpKey, channels: &[Arc<str>]) -> Result<(), Reject> {
    let shared = ctx.shared;
    let new = shared.hub.unknown(channels) as u32;
    let now = shared.now_ms();
    shared
        .access
        .new_channels
        .take(ip, new, now)
        .map_err(|secs| {
            WorkerStats::add(&ctx.stats.rejected_new_channels, 1);
            Reject::new(
                429,
                "too_many_new_channels",
                "this client IP subscribes to too many channels nobody listens to",
            )
            .with_header(format!("Retry-After: {secs}"))
        })
}

/// `?batch=1` (or `true`), honoured while a batch window is configured.
fn wants_batch(head: &Head, ctx: &Ctx<'_>) -> bool {
    ctx.shared.config.batch.window_ms > 0
        && matches!(
            query_param(&head.query, "batch").as_deref(),
            Some("1") | Some("true")
        )
}

fn client_key(head: &Head, ctx: &Ctx<'_>) -> IpKey {
    let trusted = &ctx.shared.config.limits.trusted_proxies;
    IpKey::of(client_ip(ctx.peer, head.forwarded_for.as_deref(), trusted))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    channel: String,
    data: serde_json::Value,
    /// Publisher-chosen id: a second publish with it inside the dedupe
    /// window is acknowledged as a duplicate and not delivered.
    id: Option<String>,
}

/// Longest publisher id.
const MAX_PUBLISH_ID_LEN: usize = 256;

/// The resume point of a stream: the `Last-Event-ID` header (what
/// EventSource sends on reconnect) or the `lastEventId` query parameter.
fn stream_cursor(head: &Head, ctx: &Ctx<'_>) -> Result<Option<u64>, Reject> {
    let raw = match &head.last_event_id {
        Some(v) => Some(v.clone()),
        None => query_param(&head.query, "lastEventId"),
    };
    // Only the format of the ids this node gives out.
    let format = crate::hub::ids::Format::of_redis_mode(ctx.shared.redis.is_some());
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => format.parse_cursor(v).map(Some).ok_or_else(|| {
            Reject::new(
                400,
                "bad_cursor",
                format!("Last-Event-ID {v:?} is not an event id redix gave out"),
            )
        }),
    }
}

/// The resume point of a composite-cursor stream over `channels`
/// (canonical order): its cursor, or `0` for all the history there is.
fn composite_cursor(head: &Head, channels: &[Arc<str>]) -> Result<Resume, Reject> {
    let raw = match &head.last_event_id {
        Some(v) => Some(v.clone()),
        None => query_param(&head.query, "lastEventId"),
    };
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(Resume::Fresh),
        Some("0") => Ok(Resume::At(0)),
        Some(v) => cursor::parse(v, channels).map(Resume::Each).map_err(|e| {
            let shown: String = v.chars().take(64).collect();
            Reject::new(400, "bad_cursor", format!("Last-Event-ID {shown:?} {e}"))
        }),
    }
}

fn publish(head: &Head, body: &[u8], ctx: &Ctx<'_>) -> Result<Action, Reject> {
    authorize(head, ctx, Scope::Publish)?;
    quota::charge_publish(ctx, quota::client(head, ctx))?;
    let req: PublishBody = serde_json::from_slice(body)
        .map_err(|e| Reject::new(400, "bad_json", format!("publish body: {e}")))?;
    check_channel(&req.channel).map_err(|m| Reject::new(400, "bad_channel", m))?;
    if ctx.shared.market.is_some() && req.channel.starts_with(MARKET_PREFIX) {
        return Err(Reject::new(
            403,
            "market_channel",
            "trades:* channels are fed by the market upstream and cannot be published to",
        ));
    }
    if let Some(id) = &req.id {
        if id.is_empty() || id.len() > MAX_PUBLISH_ID_LEN {
            return Err(Reject::new(
                400,
                "bad_id",
                format!("publish ids are 1 to {MAX_PUBLISH_ID_LEN} bytes"),
            ));
        }
    }
    let data = req.data.to_string();
    let shared = ctx.shared;
    if shared.redis.is_some() {
        let publish = Publish {
            channel: req.channel,
            data,
            publish_id: req.id,
        };
        return Ok(Action::Publish {
            publish,
            keep_alive: head.keep_alive,
        });
    }
    let done = shared
        .hub
        .publish(&req.channel, &data, req.id.as_deref(), shared.now_ms());
    let id = done.id.to_string();
    Ok(Action::Respond {
        bytes: publish_ok(&id, &req.channel, done.duplicate, head.keep_alive),
        close: !head.keep_alive,
    })
}
