//! Redis mode: the bridge threads between the reactors and Redis.
//!
//! Two connections per process, never one per client:
//! - the pub/sub thread ([`pubsub`]) SUBSCRIBEs exactly the channels with
//!   local subscribers (the hub's channel set, counted over every reactor)
//!   and hands each message to the hub, which fans it out;
//! - the command thread ([`command`]) runs publishes (`scripts/publish.lua`:
//!   stream entry and notification in one atomic step), loads channel
//!   histories from their streams, and sends the readiness canary.
//!
//! With `redis.cluster` the pub/sub thread is [`shards`]: sharded
//! pub/sub, one subscriber connection per master, following slot moves
//! and failovers.
//!
//! With `redis.sentinels` a third thread ([`sentinel`]) keeps the shared
//! [`Master`] pointing at the master Sentinel names; every thread that
//! talks to Redis reads it when it connects and reconnects when it moves.
//! With `redis.min_replicas_ack` the command thread follows each publish
//! batch with `WAIT` and answers 503 when too few replicas confirmed it.
//!
//! Reactors never wait on Redis: they hand commands over a bounded queue
//! with `try_send` (full: 503, counted; see [`crate::link`]) and get
//! answers through their mailboxes. Both threads reconnect with
//! exponential backoff and jitter. Each thread is given what it uses (the
//! link handle, the hub, the clock, its settings), never the whole
//! server state, and imports nothing from `reactor/`.

mod cli;
mod cluster_pipe;
pub mod command;
mod loads;
pub mod master;
pub mod pubsub;
pub mod sentinel;
pub mod shards;
pub mod wire;

pub use master::Master;

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::config::Config;
use crate::health::Beat;
use crate::hub::Hub;
use crate::link::{Queues, Redis};
use crate::mailbox::Mailbox;

/// Where a Redis endpoint is, from a `redis://` URL. User name and
/// password are decoded here, once, for both connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The database of the command connection (pub/sub has none).
    pub db: i64,
}

impl Endpoint {
    /// Reads `redis://[user:password@]host[:port][/db]`; user name and
    /// password may be percent-encoded (`@ : / %` must be).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let parsed = ::redis::parse_redis_url(url)
            .ok_or_else(|| format!("{url:?} is not a redis:// URL"))?;
        if parsed.scheme() != "redis" {
            return Err(format!("{url:?}: only redis:// URLs are supported"));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{url:?} names no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let username = Some(parsed.username())
            .filter(|u| !u.is_empty())
            .map(|u| percent_decode(u).map_err(|e| format!("{url:?}: the user name {e}")))
            .transpose()?;
        let password = parsed
            .password()
            .map(|p| percent_decode(p).map_err(|e| format!("{url:?}: the password {e}")))
            .transpose()?;
        let db = match parsed.path().trim_matches('/') {
            "" => 0,
            db => db
                .parse()
                .map_err(|_| format!("{url:?}: {db:?} is not a database number"))?,
        };
        Ok(Endpoint {
            host,
            port: parsed.port().unwrap_or(6379),
            username,
            password,
            db,
        })
    }

    /// What the `redis` crate needs for the command connection: the same
    /// decoded credentials the pub/sub connection sends.
    pub fn connection_info(&self) -> ::redis::RedisResult<::redis::ConnectionInfo> {
        use ::redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
        let mut settings = RedisConnectionInfo::default().set_db(self.db);
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(pass) = &self.password {
            settings = settings.set_password(pass);
        }
        let info = ConnectionAddr::Tcp(self.host.clone(), self.port).into_connection_info()?;
        Ok(info.set_redis_settings(settings))
    }
}

/// Decodes `%XX` escapes (a `%` without two hex digits stays as it is);
/// the result must be UTF-8.
fn percent_decode(s: &str) -> Result<String, &'static str> {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 once decoded")
}

/// Exponential backoff with jitter, from `min` to `max`.
#[derive(Debug)]
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
    next_ms: u64,
    rng: u64,
}

impl Backoff {
    pub fn new(min_ms: u64, max_ms: u64) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Backoff {
            min_ms,
            max_ms,
            next_ms: min_ms,
            rng: seed | 1,
        }
    }

    pub fn reset(&mut self) {
        self.next_ms = self.min_ms;
    }

    /// The next wait: between half and all of the current step, which
    /// then doubles up to the cap.
    /// The next wait with full jitter: anywhere from nothing to the
    /// current step, which then doubles up to the cap (a fleet that lost
    /// its upstream at once comes back spread over the whole step).
    pub fn next_wait_full(&mut self) -> Duration {
        let step = self.next_ms;
        self.next_ms = (step * 2).min(self.max_ms);
        Duration::from_millis(self.random() % (step + 1))
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    pub fn next_wait(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let step = self.next_ms;
        self.next_ms = (step * 2).min(self.max_ms);
        let half = step / 2;
        Duration::from_millis(half + self.rng % (step - half + 1))
    }
}

/// Keeps a failing reconnect loop from filling the log: the first failure
/// is a warning, then one summary at most every 30 s.
#[derive(Debug, Default)]
pub struct Quiet {
    last: Option<std::time::Instant>,
    skipped: u64,
}

impl Quiet {
    const EVERY: Duration = Duration::from_secs(30);

    /// Logs `line` as a warning unless one went out recently.
    pub fn warn(&mut self, line: std::fmt::Arguments<'_>) {
        let due = self.last.is_none_or(|t| t.elapsed() >= Self::EVERY);
        if !due {
            self.skipped += 1;
            log::debug!("{line}");
            return;
        }
        match self.skipped {
            0 => log::warn!("{line}"),
            n => log::warn!("{line} ({n} more like it since the last report)"),
        }
        self.last = Some(std::time::Instant::now());
        self.skipped = 0;
    }

    /// The link works again: the next failure is reported at once.
    pub fn reset(&mut self) {
        *self = Quiet::default();
    }
}

/// How long history and publisher ids are kept: the arguments of the
/// publish and load scripts.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_events: usize,
    pub max_age_ms: u64,
    pub dedupe_ttl_ms: u64,
}

impl Retention {
    pub fn of(config: &Config) -> Retention {
        Retention {
            max_events: config.history.max_events,
            max_age_ms: config.history.max_age_ms,
            dedupe_ttl_ms: config.publish.dedupe_ttl_ms,
        }
    }
}

/// Everything the two threads are given.
pub struct Parts {
    pub redis: Arc<Redis>,
    /// The queues the reactors (publishes) and the pub/sub thread
    /// (history loads) fill through `redis`.
    pub queues: Queues,
    pub hub: Arc<Hub>,
    pub clock: Clock,
    /// Where publish answers go, by reactor.
    pub mailboxes: Vec<Arc<Mailbox>>,
    pub retention: Retention,
    /// The two threads' heartbeats: (command, pub/sub).
    pub beats: (Beat, Beat),
}

/// Starts the pub/sub and command threads (and with `redis.sentinels`
/// the Sentinel watcher that tells them where the master is).
pub fn start(parts: Parts) -> Result<(), String> {
    let redis = &parts.redis;
    let cfg = &redis.config;
    match redis.master.endpoint() {
        Ok(e) => log::info!(
            "Redis mode: {}:{} (prefix {:?}, node {})",
            e.host,
            e.port,
            cfg.prefix,
            redis.node
        ),
        Err(_) => log::info!(
            "Redis mode: master {:?} through {} sentinels (prefix {:?}, node {})",
            cfg.master_name,
            cfg.sentinels.len(),
            cfg.prefix,
            redis.node
        ),
    }
    if !redis.master.sentinels.is_empty() {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let backoff = (cfg.backoff_min_ms, cfg.backoff_max_ms);
        sentinel::start(redis.master.clone(), timeout, backoff)?;
    }
    let (redis, hub, clock) = (redis.clone(), parts.hub.clone(), parts.clock);
    let beat = parts.beats.1.clone();
    // Redis Cluster receives with sharded pub/sub, one link per master.
    let receive: Box<dyn FnOnce() + Send> = match cfg.is_cluster() {
        true => {
            let sub = shards::ShardedPubSub {
                redis,
                hub,
                clock,
                beat,
            };
            Box::new(move || sub.run())
        }
        false => {
            let sub = pubsub::PubSub {
                redis,
                hub,
                clock,
                beat,
            };
            Box::new(move || sub.run())
        }
    };
    std::thread::Builder::new()
        .name("redix-redis-pubsub".into())
        .spawn(receive)
        .map_err(|e| format!("spawn Redis pub/sub thread: {e}"))?;
    std::thread::Builder::new()
        .name("redix-redis-command".into())
        .spawn(move || command::run(parts))
        .map_err(|e| format!("spawn Redis command thread: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Endpoint::parse("redis://u:p@10.0.0.1:6380/2").unwrap();
        assert_eq!(
            (
                e.host.as_str(),
                e.port,
                e.username.as_deref(),
                e.password.as_deref()
            ),
            ("10.0.0.1", 6380, Some("u"), Some("p"))
        );
        assert_eq!(Endpoint::parse("redis://h").unwrap().port, 6379);
        assert_eq!(Endpoint::parse("redis://h/3").unwrap().db, 3);
        assert!(Endpoint::parse("redis://h/x").is_err());
        assert!(Endpoint::parse("http://h").is_err());
        assert!(Endpoint::parse("nonsense").is_err());
    }

    #[test]
    fn credentials_are_percent_decoded_once() {
        let e = Endpoint::parse("redis://us%40r%3A1:p%40ss%3Aw%2Frd%2525@h:1").unwrap();
        assert_eq!(e.username.as_deref(), Some("us@r:1"));
        assert_eq!(e.password.as_deref(), Some("p@ss:w/rd%25"));
        let info = e.connection_info().unwrap();
        let settings = info.redis_settings();
        assert_eq!(settings.username(), Some("us@r:1"));
        assert_eq!(settings.password(), Some("p@ss:w/rd%25"));
        for (raw, decoded) in [("a%zz", "a%zz"), ("%", "%"), ("%C3%A9", "\u{e9}"), ("", "")] {
            assert_eq!(percent_decode(raw).as_deref(), Ok(decoded), "{raw:?}");
        }
        assert!(percent_decode("%FF").is_err());
        assert!(Endpoint::parse("redis://:%FF@h").is_err());
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new(50, 2000);
        let waits: Vec<u64> = (0..10).map(|_| b.next_wait().as_millis() as u64).collect();
        assert!((25..=50).contains(&waits[0]), "{waits:?}");
        assert!((50..=100).contains(&waits[1]), "{waits:?}");
        assert!(
            waits[6..].iter().all(|w| (1000..=2000).contains(w)),
            "{waits:?}"
        );
        b.reset();
        assert!(b.next_wait().as_millis() <= 50);
    }
}
