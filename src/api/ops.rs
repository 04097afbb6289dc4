//! The operator's endpoints: `/readyz`, `/metrics/prom` and `/debug/fds`
//! (and its test hook, `POST /debug/leak-fd`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::admin::AdminStart;
use super::answers::{json_ok, unavailable, Reject};
use super::{Action, Ctx};
use crate::admin::Ask;
use crate::diag;
use crate::health::STUCK_AFTER_MS;
use crate::metrics::{self, JobFigures, MarketFigures, ProcessFigures, RedisFigures};
use crate::proto::http::{self, query_param, Head};
use crate::state::Shared;

/// Fds the test hook may leak in one process's life.
const MAX_TEST_LEAKS: usize = 8;
static LEAKED: AtomicUsize = AtomicUsize::new(0);

/// Readiness: not draining, every reactor turning, and in Redis mode a
/// canary that came back through Redis pub/sub within the window.
pub fn ready(head: &Head, ctx: &Ctx<'_>) -> Result<Action, Reject> {
    let shared = ctx.shared;
    if shared.is_shutting_down() {
        return Err(Reject::new(503, "shutting_down", "this node is draining")
            .with_header("Retry-After: 1".into()));
    }
    if !shared.reactors_alive(STUCK_AFTER_MS) {
        return Err(Reject::new(
            503,
            "reactor_stuck",
            "a reactor thread has not turned for 5 s",
        )
        .with_header("Retry-After: 5".into()));
    }
    if let Some(redis) = &shared.redis {
        redis
            .ready(shared.now_ms())
            .map_err(|why| unavailable("redis_unavailable", why))?;
    }
    Ok(json_ok(head, r#"{"status":"ready"}"#.into()))
}

/// `/metrics/prom`.
pub fn metrics(head: &Head, ctx: &Ctx<'_>) -> Action {
    Action::Respond {
        bytes: http::response(
            200,
            metrics::CONTENT_TYPE,
            render_metrics(ctx.shared).as_bytes(),
            head.keep_alive,
            &[],
        ),
        close: !head.keep_alive,
    }
}

/// `/debug/fds`: the census runs off the reactors (see `Ask::Fds`); the
/// request waits for it.
pub fn fds(head: &Head) -> Action {
    Action::Admin(AdminStart {
        ask: Arc::new(Ask::Fds),
        only: None,
        keep_alive: head.keep_alive,
    })
}

/// `POST /debug/leak-fd`, the test hook (served only with
/// `debug.test_hooks`, which only a debug build accepts): leaks one
/// socket nothing owns, at most [`MAX_TEST_LEAKS`] in a process's life.
pub fn leak_fd(head: &Head) -> Result<Action, Reject> {
    if LEAKED.fetch_add(1, Ordering::Relaxed) >= MAX_TEST_LEAKS {
        let why = format!("the test hook leaks at most {MAX_TEST_LEAKS} fds");
        return Err(Reject::new(429, "leak_limit", why));
    }
    let (fd, inode, addr) = diag::leak_test_socket()
        .map_err(|e| unavailable("leak_failed", format!("test socket: {e}")))?;
    log::warn!("test hook: leaked fd {fd} (a TCP listener on {addr}) on purpose");
    let body = serde_json::json!({"fd": fd, "inode": inode, "local": addr.to_string()});
    Ok(json_ok(head, body.to_string()))
}

/// The exposition text: per-reactor counters summed, process figures, and
/// in Redis mode the link's.
pub fn render_metrics(shared: &Shared) -> String {
    let hub = &shared.hub.stats;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let figures = ProcessFigures {
        open_fds: shared.fds.open_fds.load(Ordering::Relaxed),
        fd_limit: shared.fds.fd_limit,
        max_connections: shared.fds.max_conns as u64,
        hub: shared.hub.figures(),
        published: get(&hub.published),
        duplicates: get(&hub.duplicates),
        untracked: get(&hub.untracked),
        replayed: get(&hub.replayed),
        resets: get(&hub.resets),
        inbox_drops: get(&hub.inbox_drops),
        evicted: get(&hub.evicted),
        ip_tracked: (shared.access.sse.tracked() + shared.access.ws.tracked()) as u64,
        ws_compressions: get(&hub.ws_compressions),
        sse_gzip_compressions: get(&hub.sse_gzip_compressions),
    };
    let mut text = metrics::render(&shared.stats, &figures);
    if let Some(redis) = &shared.redis {
        let l = &redis.link;
        let r = RedisFigures {
            up: redis.is_up(shared.now_ms()),
            pubsub_up: l.pubsub_up.load(Ordering::Relaxed),
            command_up: l.command_up.load(Ordering::Relaxed),
            reconnects: get(&l.reconnects),
            received: get(&l.received),
            lag_ms: get(&l.lag_ms),
            backlog_bytes: get(&l.backlog_bytes),
            canary_rtt_ms: get(&l.canary_rtt_ms),
            subscribed: get(&l.subscribed),
            dropped: get(&l.dropped),
            publishes: get(&l.publishes),
            publish_errors: get(&l.publish_errors),
            loads: get(&hub.syncs),
            repeats: get(&hub.remote_repeats),
            held_dropped: get(&hub.held_dropped),
            data_losses: get(&l.data_losses),
            unacked: get(&l.unacked),
            master_switches: get(&redis.master.switches),
        };
        metrics::render_redis(&mut text, &r);
        if redis.names.is_cluster() {
            metrics::render_shards(&mut text, &redis.shards.rows());
        }
    }
    let j = &shared.jobs.stats;
    let jobs = JobFigures {
        submitted: get(&j.submitted),
        joined: get(&j.joined),
        cache_hits: get(&j.cache_hits),
        completed: get(&j.completed),
        failed: get(&j.failed),
        stalled: get(&j.stalled),
        pending: get(&j.pending),
        running: get(&j.running),
        refused: get(&j.refused),
        breaker: shared.jobs.breaker.state() as u64,
        breaker_opened: get(&shared.jobs.breaker.opened),
    };
    metrics::render_jobs(&mut text, &jobs);
    if let Some(m) = &shared.market {
        let figures = MarketFigures {
            up: m.up.load(Ordering::Relaxed),
            reconnects: get(&m.reconnects),
            trades: get(&m.trades),
            symbols: get(&m.symbols),
            refused: get(&m.refused),
            breaker_open: m.breaker_open.load(Ordering::Relaxed),
            simulated: m.simulated.load(Ordering::Relaxed),
            lease_held: m.lease_held.load(Ordering::Relaxed),
            fence: get(&m.fence),
            leases_taken: get(&m.leases_taken),
        };
        metrics::render_market(&mut text, &figures);
    }
    text
}

/// `POST /debug/wedge?ms=N` (`debug.wedge` only): blocks this reactor for
/// N ms, at most a minute, so tests can see the watchdog withheld.
pub fn wedge(head: &Head) -> Action {
    let ms = query_param(&head.query, "ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1000)
        .min(60_000);
    log::warn!("debug: wedging this reactor for {ms} ms (debug.wedge)");
    std::thread::sleep(std::time::Duration::from_millis(ms));
    json_ok(head, format!(r#"{{"wedged_ms":{ms}}}"#))
}
