//! What every reactor thread shares: configuration, the hub, limits,
//! keys, per-thread statistics and process-wide figures.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Instant;

use crate::auth::Keys;
use crate::bridge::Redis;
use crate::config::{Config, Scope};
use crate::diag::{self, Owned};
use crate::hub::Hub;
use crate::limits::{IpLimiter, RateLimiter};
use crate::metrics::{self, ProcessFigures, RedisFigures, WorkerStats};

pub struct Shared {
    pub config: Config,
    pub hub: Hub,
    /// API keys; SIGHUP replaces them.
    keys: RwLock<Keys>,
    pub sse_limiter: IpLimiter,
    pub ws_limiter: IpLimiter,
    pub request_limiter: RateLimiter,
    /// One entry per reactor thread; each thread writes only its own.
    pub stats: Box<[WorkerStats]>,
    /// Open client connections over all reactors (for the global cap).
    pub open_conns: AtomicUsize,
    pub max_conns: usize,
    pub fd_limit: u64,
    /// Listening sockets (one per reactor).
    pub listeners: usize,
    /// Fds that are neither connections nor listeners, counted once every
    /// reactor is up and before the first accept.
    pub internal_fds: AtomicU64,
    /// Set by the first SIGTERM/SIGINT.
    pub shutting_down: AtomicBool,
    /// The hub's clock: history ages and dedupe windows count from here.
    pub epoch: Instant,
    /// When each reactor last finished a turn (ms on the hub's clock). An
    /// idle reactor still turns every second, so a stale value means a
    /// stuck thread.
    pub last_turn_ms: Box<[AtomicU64]>,
    /// Redis mode: the bridge's link and command queue.
    pub redis: Option<Redis>,
}

impl Shared {
    pub fn new(
        config: Config,
        hub: Hub,
        workers: usize,
        fd_limit: u64,
        max_conns: usize,
        redis: Option<Redis>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            keys: RwLock::new(Keys::from_config(&config)),
            sse_limiter: IpLimiter::new(config.limits.sse_per_ip),
            ws_limiter: IpLimiter::new(config.limits.ws_per_ip),
            request_limiter: RateLimiter::new(
                config.limits.requests_per_sec,
                config.limits.request_burst,
            ),
            config,
            hub,
            stats: (0..workers).map(|_| WorkerStats::default()).collect(),
            open_conns: AtomicUsize::new(0),
            max_conns,
            fd_limit,
            listeners: workers,
            internal_fds: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            epoch: Instant::now(),
            last_turn_ms: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            redis,
        })
    }

    pub fn keys(&self) -> RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies what can change without a restart: API keys and per-IP
    /// limits. Everything else in `new` waits for the next start.
    pub fn reload(&self, new: &Config) {
        let keys = Keys::from_config(new);
        let count = new.keys_for(Scope::Publish).len() + new.auth.admin_keys.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        self.sse_limiter.set_max(new.limits.sse_per_ip);
        self.ws_limiter.set_max(new.limits.ws_per_ip);
        log::info!(
            "SIGHUP: reloaded API keys ({count} entries) and per-IP limits (SSE {}, WebSocket {}); other keys apply at the next start",
            new.limits.sse_per_ip,
            new.limits.ws_per_ip
        );
    }

    /// Milliseconds on the hub's clock.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Every reactor finished a turn within `within_ms`.
    pub fn reactors_alive(&self, within_ms: u64) -> bool {
        let now = self.now_ms();
        self.last_turn_ms
            .iter()
            .all(|t| now.saturating_sub(t.load(Ordering::Relaxed)) <= within_ms)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Records the fd baseline: whatever is open now that is not a listener.
    pub fn record_fd_baseline(&self) {
        let open = diag::open_fd_count();
        let internal = open.saturating_sub(self.listeners as u64);
        self.internal_fds.store(internal, Ordering::Relaxed);
    }

    pub fn owned_fds(&self) -> Owned {
        Owned {
            connections: self.open_conns.load(Ordering::Relaxed) as u64,
            listeners: self.listeners as u64,
            internal: self.internal_fds.load(Ordering::Relaxed),
            redis: self
                .redis
                .as_ref()
                .map_or(0, |r| r.link.connections.load(Ordering::Relaxed)),
        }
    }

    pub fn render_metrics(&self) -> String {
        let figures = ProcessFigures {
            open_fds: diag::open_fd_count(),
            fd_limit: self.fd_limit,
            max_connections: self.max_conns as u64,
            hub: self.hub.figures(),
            published: self.hub.stats.published.load(Ordering::Relaxed),
            duplicates: self.hub.stats.duplicates.load(Ordering::Relaxed),
            untracked: self.hub.stats.untracked.load(Ordering::Relaxed),
            replayed: self.hub.stats.replayed.load(Ordering::Relaxed),
            resets: self.hub.stats.resets.load(Ordering::Relaxed),
            inbox_drops: self.hub.stats.inbox_drops.load(Ordering::Relaxed),
            ip_tracked: (self.sse_limiter.tracked() + self.ws_limiter.tracked()) as u64,
            ws_compressions: self.hub.stats.ws_compressions.load(Ordering::Relaxed),
            sse_gzip_compressions: self.hub.stats.sse_gzip_compressions.load(Ordering::Relaxed),
        };
        let mut text = metrics::render(&self.stats, &figures);
        if let Some(redis) = &self.redis {
            let l = &redis.link;
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let hub = &self.hub.stats;
            let r = RedisFigures {
                up: redis.is_up(self.now_ms()),
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
            };
            metrics::render_redis(&mut text, &r);
        }
        text
    }
}
