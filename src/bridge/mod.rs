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
//! Reactors never wait on Redis: they hand commands over a bounded queue
//! with `try_send` (full: 503, counted) and get answers through their
//! mailboxes. Both threads reconnect with exponential backoff and jitter.

pub mod command;
pub mod pubsub;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::RedisConfig;
use crate::reactor::Mailbox;
use crate::state::Shared;

/// Where a Redis endpoint is, from a `redis://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Endpoint {
    /// Reads `redis://[user:password@]host[:port][/db]`.
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
            .map(str::to_string);
        Ok(Endpoint {
            host,
            port: parsed.port().unwrap_or(6379),
            username,
            password: parsed.password().map(str::to_string),
        })
    }
}

/// Key and channel names redix uses in Redis (see `scripts/publish.lua`).
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
        }
    }

    /// The stream holding a channel's history.
    pub fn stream(&self, channel: &str) -> String {
        format!("{}s:{channel}", self.prefix)
    }

    /// The pub/sub channel announcing a channel's events.
    pub fn notify(&self, channel: &str) -> String {
        format!("{}c:{channel}", self.prefix)
    }

    /// The redix channel a pub/sub channel announces.
    pub fn channel_of<'a>(&self, notify: &'a str) -> Option<&'a str> {
        notify.strip_prefix(&self.prefix)?.strip_prefix("c:")
    }

    /// The last id handed out, cluster-wide.
    pub fn last_id(&self) -> String {
        format!("{}last", self.prefix)
    }

    /// Remembers a publisher's id for deduplication.
    pub fn seen(&self, publish_id: &str) -> String {
        format!("{}p:{publish_id}", self.prefix)
    }

    /// Ids up to this stream id were lost with a Redis that restarted
    /// empty; raised by every node that notices.
    pub fn lost(&self) -> String {
        format!("{}lost", self.prefix)
    }

    /// The node-private canary channel.
    pub fn canary(&self, node: &str) -> String {
        format!("{}canary:{node}", self.prefix)
    }
}

/// The state of the Redis link, read by `/readyz` and the metrics.
#[derive(Debug, Default)]
pub struct Link {
    pub pubsub_up: AtomicBool,
    pub command_up: AtomicBool,
    /// When a canary last came back in time (hub clock, ms); 0: never.
    pub canary_ok_ms: AtomicU64,
    pub canary_rtt_ms: AtomicU64,
    pub reconnects: AtomicU64,
    /// Messages read from the pub/sub connection.
    pub received: AtomicU64,
    /// Publish time to arrival here of the last pub/sub message, ms.
    pub lag_ms: AtomicU64,
    /// Bytes received but not yet handled on the pub/sub connection.
    pub backlog_bytes: AtomicU64,
    /// Commands refused because the queue to the command thread was full.
    pub dropped: AtomicU64,
    pub publishes: AtomicU64,
    pub publish_errors: AtomicU64,
    /// Channels subscribed on the pub/sub connection.
    pub subscribed: AtomicU64,
    /// Open connections to Redis (file descriptors).
    pub connections: AtomicU64,
    /// Reconnects that found Redis without the newest id this node saw.
    pub data_losses: AtomicU64,
}

/// Work for the command thread.
#[derive(Debug)]
pub enum Command {
    Publish(Publish),
    /// Load a channel's history (the sync with `token`): the newest
    /// events, or after a lost link everything after `after`.
    Load {
        channel: Arc<str>,
        token: u64,
        after: Option<u64>,
    },
}

#[derive(Debug)]
pub struct Publish {
    pub channel: String,
    /// One line of JSON.
    pub data: String,
    pub publish_id: Option<String>,
    pub reply: Reply,
}

/// Which connection waits for an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub reactor: usize,
    pub key: usize,
    pub gen: u32,
}

/// The answer to a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    Done {
        id: String,
        duplicate: bool,
    },
    /// Redis could not be reached or refused; the client gets a 503.
    Failed(String),
}

/// Why a command was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The command link is down.
    Down,
    /// The queue is full.
    Busy,
}

/// The reactors' handle on the bridge.
pub struct Redis {
    pub config: RedisConfig,
    pub link: Link,
    pub names: Names,
    /// This process in the cluster (its canary channel).
    pub node: String,
    commands: Sender<Command>,
    /// When a full queue was last logged (wall clock, ms).
    last_drop_log_ms: AtomicU64,
}

impl Redis {
    pub fn new(config: RedisConfig) -> (Redis, Receiver<Command>) {
        let (tx, rx) = crossbeam_channel::bounded(config.queue);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let node = format!("{}-{nanos:x}", std::process::id());
        let redis = Redis {
            names: Names::new(&config.prefix),
            config,
            link: Link::default(),
            node,
            commands: tx,
            last_drop_log_ms: AtomicU64::new(0),
        };
        (redis, rx)
    }

    /// Queues a command without waiting.
    pub fn submit(&self, cmd: Command) -> Result<(), Refused> {
        if !self.link.command_up.load(Ordering::Acquire) {
            return Err(Refused::Down);
        }
        match self.commands.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let refused = self.link.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // One line per 10 s at most: the counter has the rest.
                let now = wall_ms();
                let last = self.last_drop_log_ms.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= 10_000
                    && self
                        .last_drop_log_ms
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    log::warn!(
                        "Redis command queue full ({} waiting): refusing with 503 ({refused} refused so far)",
                        self.config.queue
                    );
                }
                Err(Refused::Busy)
            }
        }
    }

    /// Ready: both connections up and a canary came back through pub/sub
    /// in time, recently. Else why not.
    pub fn ready(&self, now_ms: u64) -> Result<(), &'static str> {
        if !self.link.command_up.load(Ordering::Acquire) {
            return Err("the Redis command connection is down");
        }
        if !self.link.pubsub_up.load(Ordering::Acquire) {
            return Err("the Redis pub/sub connection is down");
        }
        let ok = self.link.canary_ok_ms.load(Ordering::Acquire);
        let window = self.config.ready_within_ms + self.config.canary_ms;
        if ok == 0 || now_ms.saturating_sub(ok) > window {
            return Err("no canary came back through Redis pub/sub in time");
        }
        Ok(())
    }

    pub fn is_up(&self, now_ms: u64) -> bool {
        self.ready(now_ms).is_ok()
    }
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

/// Milliseconds of the wall clock (Redis stream ids use it too).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the pub/sub and command threads.
pub fn start(
    shared: &Arc<Shared>,
    mailboxes: Vec<Arc<Mailbox>>,
    commands: Receiver<Command>,
) -> Result<(), String> {
    let Some(redis) = &shared.redis else {
        return Ok(());
    };
    let endpoint = Endpoint::parse(&redis.config.url)?;
    log::info!(
        "Redis mode: {}:{} (prefix {:?}, node {})",
        endpoint.host,
        endpoint.port,
        redis.config.prefix,
        redis.node
    );
    let (s1, s2) = (shared.clone(), shared.clone());
    let ep = endpoint.clone();
    std::thread::Builder::new()
        .name("redix-redis-pubsub".into())
        .spawn(move || pubsub::run(s1, ep))
        .map_err(|e| format!("spawn Redis pub/sub thread: {e}"))?;
    std::thread::Builder::new()
        .name("redix-redis-command".into())
        .spawn(move || command::run(s2, mailboxes, commands))
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
        assert!(Endpoint::parse("http://h").is_err());
        assert!(Endpoint::parse("nonsense").is_err());
    }

    #[test]
    fn names_round_trip() {
        let n = Names::new("rx:");
        assert_eq!(n.stream("a"), "rx:s:a");
        assert_eq!(n.channel_of(&n.notify("trades:AAPL")), Some("trades:AAPL"));
        assert_eq!(n.channel_of("other:c:x"), None);
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
