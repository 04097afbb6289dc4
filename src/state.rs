//! What every reactor thread shares, grouped by concern: configuration,
//! the clock, the hub, who may do what ([`Access`]), how many connections
//! and descriptors there are ([`FdBook`]), liveness, per-reactor counters
//! and, in Redis mode, the handle on the Redis bridge.
//!
//! This module builds nothing and starts nothing (`server` does); it
//! imports nothing from `bridge/` or `reactor/`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};

use crate::auth::Keys;
use crate::clock::Clock;
use crate::config::{Config, Scope};
use crate::diag::{self, Owned};
use crate::health::Health;
use crate::hub::Hub;
use crate::jobs::Jobs;
use crate::limits::{ClientKey, IpLimiter, RateLimiter};
use crate::link::{MarketLink, Redis};
use crate::mailbox::Mailbox;
use crate::metrics::WorkerStats;
use crate::tokens::{Policy, SubjectLimiter};

pub struct Shared {
    pub config: Config,
    pub clock: Clock,
    pub hub: Arc<Hub>,
    pub access: Access,
    pub fds: FdBook,
    pub health: Health,
    /// One entry per reactor thread; each thread writes only its own.
    pub stats: Box<[WorkerStats]>,
    /// Redis mode: the link to the bridge threads.
    pub redis: Option<Arc<Redis>>,
    /// With `market.url`: the market link's state.
    pub market: Option<Arc<MarketLink>>,
    /// The job engine's queue, breaker and counters.
    pub jobs: Arc<Jobs>,
    /// Every reactor's mailbox, by reactor id: an admin request asks all
    /// of them. Set once by `server::run` before the reactors start.
    pub mailboxes: OnceLock<Box<[Arc<Mailbox>]>>,
}

/// API keys, who may subscribe and per-client limits; SIGHUP replaces
/// keys, the subscribe policy and limits.
pub struct Access {
    keys: RwLock<Keys>,
    /// `auth.subscribe`, the token secrets, the allowed origins.
    policy: RwLock<Policy>,
    /// Connections per token subject; each stream's `SubjectSlot` holds
    /// a clone and gives its place back when dropped.
    pub subjects: Arc<SubjectLimiter>,
    pub sse: IpLimiter,
    pub ws: IpLimiter,
    /// Plain HTTP connections per peer IP (trusted proxies exempt).
    pub http: IpLimiter,
    pub requests: RateLimiter,
    /// New channels per client IP (see `limits.new_channels_per_min`).
    pub new_channels: RateLimiter,
    /// New jobs per client, an API key or an IP (`limits.jobs_per_min`).
    pub jobs: RateLimiter<ClientKey>,
    /// Publishes per client (`limits.publishes_per_sec`).
    pub publishes: RateLimiter<ClientKey>,
}

impl Access {
    fn new(config: &Config) -> Access {
        let limits = &config.limits;
        Access {
            keys: RwLock::new(Keys::from_config(config)),
            policy: RwLock::new(Policy::from_config(&config.auth)),
            subjects: Arc::new(SubjectLimiter::new(subject_cap(config))),
            sse: IpLimiter::new(limits.sse_per_ip),
            ws: IpLimiter::new(limits.ws_per_ip),
            http: IpLimiter::new(limits.http_per_ip),
            requests: RateLimiter::new(limits.requests_per_sec, limits.request_burst),
            new_channels: RateLimiter::per_minute(
                limits.new_channels_per_min,
                limits.new_channel_burst,
            ),
            jobs: RateLimiter::per_minute(limits.jobs_per_min, limits.job_burst),
            publishes: RateLimiter::new(limits.publishes_per_sec, limits.publish_burst),
        }
    }

    pub fn keys(&self) -> RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn policy(&self) -> RwLockReadGuard<'_, Policy> {
        self.policy.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies the access part of a reload (see [`Shared::reload`]).
    fn reload(&self, new: &Config) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Keys::from_config(new);
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Policy::from_config(&new.auth);
        self.subjects.set_max(subject_cap(new));
        let l = &new.limits;
        self.sse.set_max(l.sse_per_ip);
        self.ws.set_max(l.ws_per_ip);
        self.http.set_max(l.http_per_ip);
        self.jobs.set_per_minute(l.jobs_per_min, l.job_burst);
        self.publishes
            .set_per_sec(l.publishes_per_sec, l.publish_burst);
    }
}

/// `auth.max_conns_per_subject`, where 0 means no cap.
fn subject_cap(config: &Config) -> u32 {
    match config.auth.max_conns_per_subject {
        0 => u32::MAX,
        n => n,
    }
}

/// Connections against the cap, and the descriptors redix believes it
/// owns (compared with the kernel's view by `/debug/fds`).
pub struct FdBook {
    /// Open client connections over all reactors (for the global cap).
    pub open_conns: AtomicUsize,
    pub max_conns: usize,
    pub fd_limit: u64,
    /// Listening sockets (one per reactor).
    pub listeners: usize,
    /// Fds that are neither connections nor listeners, counted once every
    /// reactor is up and before the first accept.
    pub internal_fds: AtomicU64,
    /// The fds open at that moment, with their targets: `/debug/fds`
    /// counts one still open with the same target as internal.
    pub baseline: OnceLock<Box<[diag::Fd]>>,
    /// The connection cap was reached and the open connections have not
    /// yet come down to 90 % of it: no reactor accepts.
    pub capped: AtomicBool,
    /// Open fds of the process, sampled once a second off the reactors
    /// (listing `/proc/self/fd` costs O(fds)); `/metrics/prom` reads this.
    pub open_fds: AtomicU64,
}

impl FdBook {
    pub fn open(&self) -> usize {
        self.open_conns.load(Ordering::Relaxed)
    }

    /// Records the fd baseline: whatever is open now that is not a listener.
    pub fn record_baseline(&self) {
        let fds = diag::list_fds();
        let internal = (fds.len() as u64).saturating_sub(self.listeners as u64);
        self.internal_fds.store(internal, Ordering::Relaxed);
        let _ = self.baseline.set(fds.into_boxed_slice());
    }

    /// Samples the process's open fds (see `open_fds`).
    pub fn sample(&self) {
        self.open_fds
            .store(diag::open_fd_count(), Ordering::Relaxed);
    }

    /// What redix owns, with `redis` connections to Redis.
    pub fn owned(&self, redis: u64, market: u64, jobs: u64) -> Owned {
        Owned {
            jobs,
            connections: self.open() as u64,
            listeners: self.listeners as u64,
            internal: self.internal_fds.load(Ordering::Relaxed),
            redis,
            market,
        }
    }
}

/// How many reactors and connections the process was sized for.
#[derive(Debug, Clone, Copy)]
pub struct Sizing {
    pub reactors: usize,
    pub fd_limit: u64,
    pub max_conns: usize,
}

impl Shared {
    pub fn new(
        config: Config,
        hub: Arc<Hub>,
        clock: Clock,
        sizing: Sizing,
        redis: Option<Arc<Redis>>,
        jobs: Arc<Jobs>,
    ) -> Arc<Shared> {
        let market = config
            .market
            .feed()
            .then(|| Arc::new(MarketLink::default()));
        Arc::new(Shared {
            access: Access::new(&config),
            fds: FdBook {
                open_conns: AtomicUsize::new(0),
                max_conns: sizing.max_conns,
                fd_limit: sizing.fd_limit,
                listeners: sizing.reactors,
                internal_fds: AtomicU64::new(0),
                baseline: OnceLock::new(),
                open_fds: AtomicU64::new(0),
                capped: AtomicBool::new(false),
            },
            health: Health::new(sizing.reactors),
            config,
            clock,
            hub,
            stats: (0..sizing.reactors)
                .map(|_| WorkerStats::default())
                .collect(),
            redis,
            market,
            jobs,
            mailboxes: OnceLock::new(),
        })
    }

    /// Applies what can change without a restart (SIGHUP): API keys, who
    /// may subscribe (`auth.subscribe`, the token secrets, the allowed
    /// origins, the per-subject cap; open streams keep the grant they
    /// were opened with until it expires), per-IP limits, the job and publish rates (a bucket keeps its
    /// tokens, so a reload is no free burst) and the cap on jobs in flight
    /// per client. Everything else waits for the next start.
    pub fn reload(&self, new: &Config) {
        self.access.reload(new);
        crate::logging::apply(&new.log_level);
        let l = &new.limits;
        self.jobs.set_in_flight_cap(l.jobs_in_flight);
        let count = new.keys_for(Scope::Publish).len() + new.auth.admin_keys.len();
        let a = &new.auth;
        log::info!(
            "SIGHUP: reloaded API keys ({count} entries), subscribe {:?} ({} token secrets, {} per subject, {} allowed origins), per-IP limits (SSE {}, WebSocket {}, HTTP {}) and per-client job and publish limits ({} jobs/min, {} in flight, {} publishes/s); other keys apply at the next start",
            a.subscribe,
            a.token_secrets.len(),
            a.max_conns_per_subject,
            a.allowed_origins.len(),
            l.sse_per_ip,
            l.ws_per_ip,
            l.http_per_ip,
            l.jobs_per_min,
            l.jobs_in_flight,
            l.publishes_per_sec
        );
    }

    /// Milliseconds on the process clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Every reactor finished a turn within `within_ms`.
    pub fn reactors_alive(&self, within_ms: u64) -> bool {
        self.health.reactors_alive(self.now_ms(), within_ms)
    }

    pub fn is_shutting_down(&self) -> bool {
        self.health.is_shutting_down()
    }

    /// The mailbox of reactor `id` (none before the reactors exist).
    pub fn mailbox(&self, id: usize) -> Option<&Arc<Mailbox>> {
        self.mailboxes.get().and_then(|m| m.get(id))
    }

    /// How many reactors there are.
    pub fn reactor_count(&self) -> usize {
        self.stats.len()
    }

    /// The ports that mark the Redis and market threads' sockets (see
    /// `diag::Peers`).
    pub fn fd_peers(&self) -> diag::Peers {
        // The master's port (it moves under Sentinel), the sentinels' and
        // (Redis Cluster) the seeds' and the masters' of the slot map
        // (replicas beyond them on other ports count as other sockets).
        let redis_ports = match &self.redis {
            Some(r) => {
                let sentinels = r.master.sentinels.iter().map(|(_, port)| *port);
                let seeds = r.master.seeds.iter().map(|e| e.port);
                let shards = r.shards.rows().into_iter();
                let masters = shards.filter_map(|(addr, _)| addr.rsplit_once(':')?.1.parse().ok());
                r.master
                    .port()
                    .into_iter()
                    .chain(sentinels)
                    .chain(seeds)
                    .chain(masters)
                    .collect()
            }
            None => Vec::new(),
        };
        let market = &self.config.market;
        let default = match market.url.starts_with("wss:") {
            true => 443,
            false => 80,
        };
        let mut market_ports: Vec<u16> = match market.url.is_empty() {
            true => Vec::new(),
            false => diag::url_port(&market.url, default).into_iter().collect(),
        };
        if let Some(link) = &self.market {
            let sim = link.sim_port.load(Ordering::Relaxed);
            market_ports.extend((sim != 0).then_some(sim));
        }
        diag::Peers {
            redis_ports,
            market_ports,
        }
    }

    /// The `/debug/fds` report: O(open fds) reads of `/proc`, so it is
    /// taken off the reactors.
    pub fn fd_report(&self) -> serde_json::Value {
        let baseline = self.fds.baseline.get().map_or(&[][..], |b| &b[..]);
        diag::report(self.owned_fds(), baseline, &self.fd_peers())
    }

    pub fn owned_fds(&self) -> Owned {
        let redis = self.redis.as_ref();
        let redis_conns = redis.map_or(0, |r| {
            r.link.connections.load(Ordering::Relaxed)
                + r.master.sentinel_fds.load(Ordering::Relaxed)
        });
        let market = self.market.as_ref();
        let market_fds = market.map_or(0, |m| m.fds.load(Ordering::Relaxed));
        let jobs_fds = self.jobs.fds.load(Ordering::Relaxed);
        self.fds.owned(redis_conns, market_fds, jobs_fds)
    }
}
