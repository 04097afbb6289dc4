//! The reactors' handle on the Redis bridge (Redis mode): the bounded
//! queue of commands for the command thread, the link's state that
//! `/readyz` and the metrics read, and the key names redix uses in Redis.
//!
//! The bridge threads (`bridge/`) hold the same handle; nothing here
//! blocks: a full queue or a link that is down refuses at once.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::bridge::shards::stats::ShardStats;
use crate::bridge::Master;
use crate::config::RedisConfig;
use crate::mailbox::ConnRef;

/// Key and channel names redix uses in Redis (see `scripts/publish.lua`).
///
/// With Redis Cluster every key of one channel carries the channel as its
/// hash tag (`<prefix>{<channel>}:s`), so the publish script's keys share
/// one slot; the id sequence is then the channel's own
/// (`<prefix>{<channel>}:last`), and publisher ids are remembered per
/// channel. The prefix holds no `{` (config check), so the tag is always
/// the channel.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
    cluster: bool,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
            cluster: false,
        }
    }

    /// The names of Redis Cluster mode: one hash tag per channel.
    pub fn clustered(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_string(),
            cluster: true,
        }
    }

    /// Redis Cluster mode: ids are ordered per channel only.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The stream holding a channel's history.
    pub fn stream(&self, channel: &str) -> String {
        match self.cluster {
            true => format!("{}{{{channel}}}:s", self.prefix),
            false => format!("{}s:{channel}", self.prefix),
        }
    }

    /// The pub/sub channel announcing a channel's events.
    pub fn notify(&self, channel: &str) -> String {
        match self.cluster {
            true => format!("{}{{{channel}}}:c", self.prefix),
            false => format!("{}c:{channel}", self.prefix),
        }
    }

    /// The redix channel a pub/sub channel announces.
    pub fn channel_of<'a>(&self, notify: &'a str) -> Option<&'a str> {
        let rest = notify.strip_prefix(&self.prefix)?;
        match self.cluster {
            true => rest.strip_prefix('{')?.strip_suffix("}:c"),
            false => rest.strip_prefix("c:"),
        }
    }

    /// The last id handed out: cluster-wide, or (Redis Cluster) the
    /// channel's.
    pub fn last_id_of(&self, channel: &str) -> String {
        match self.cluster {
            true => format!("{}{{{channel}}}:last", self.prefix),
            false => self.last_id(),
        }
    }

    /// The last id handed out, cluster-wide (single server and Sentinel).
    pub fn last_id(&self) -> String {
        format!("{}last", self.prefix)
    }

    /// Remembers a publisher's id for deduplication (Redis Cluster: per
    /// channel, in the channel's slot).
    pub fn seen(&self, channel: &str, publish_id: &str) -> String {
        match self.cluster {
            true => format!("{}{{{channel}}}:p:{publish_id}", self.prefix),
            false => format!("{}p:{publish_id}", self.prefix),
        }
    }

    /// The data-loss mark read by a channel's load (Redis Cluster: one
    /// per channel, in its slot; nothing sets it there yet).
    pub fn lost_of(&self, channel: &str) -> String {
        match self.cluster {
            true => format!("{}{{{channel}}}:lost", self.prefix),
            false => self.lost(),
        }
    }

    /// Ids up to this stream id were lost with a Redis that restarted
    /// empty; raised by every node that notices.
    pub fn lost(&self) -> String {
        format!("{}lost", self.prefix)
    }

    /// A market key: `<prefix>market:<what>`, or (Redis Cluster) in the
    /// one slot of the `{market}` hash tag, so the lease and interest
    /// scripts, which touch several of them, run on one master.
    fn market_key(&self, what: &str) -> String {
        match self.cluster {
            true => format!("{}{{market}}:{what}", self.prefix),
            false => format!("{}market:{what}", self.prefix),
        }
    }

    /// The market lease: "<node> <fencing token>" of the node holding the
    /// cluster's one upstream connection.
    pub fn market_lease(&self) -> String {
        self.market_key("lease")
    }

    /// The market lease's fencing counter (only grows).
    pub fn market_fence(&self) -> String {
        self.market_key("fence")
    }

    /// Every node's market interest: members "<node>|<symbol>".
    pub fn market_interest(&self) -> String {
        self.market_key("interest")
    }

    /// The market upstream's status, written by the lease holder.
    pub fn market_status(&self) -> String {
        self.market_key("status")
    }

    /// Redis Cluster: the highest market fencing token that published on
    /// a channel, in the channel's slot (the lease's slot is another, so
    /// the publish script fences there; see `market::lease`).
    pub fn channel_fence(&self, channel: &str) -> String {
        format!("{}{{{channel}}}:fence", self.prefix)
    }

    /// The prefix itself (the job functions take it as an argument).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The queue stream of one kind of job (`summarize`, `ask`). Redis
    /// Cluster: both under the tag `{jobs}`, so a worker reads them with
    /// one `XREADGROUP`.
    pub fn jobs_queue(&self, kind: &str) -> String {
        match self.cluster {
            true => format!("{}{{jobs}}:{kind}", self.prefix),
            false => format!("{}jobs:{kind}", self.prefix),
        }
    }

    /// A job's state (a hash). Redis Cluster: tagged with the job's
    /// channel `job:<id>`, so the hash and the channel's stream, id and
    /// pub/sub channel share one slot and `redix_job_event` touches only
    /// that slot.
    pub fn job(&self, id: &str) -> String {
        match self.cluster {
            true => format!("{}{{job:{id}}}:job", self.prefix),
            false => format!("{}job:{id}", self.prefix),
        }
    }

    /// Redis Cluster: a URL's summary (`h`: the URL's SHA-256, hex).
    pub fn jobs_cache(&self, h: &str) -> String {
        format!("{}jobs:cache:{h}", self.prefix)
    }

    /// Redis Cluster: the summarize job in flight for a URL.
    pub fn jobs_inflight(&self, h: &str) -> String {
        format!("{}jobs:inflight:{h}", self.prefix)
    }

    /// The job settings workers and the job functions read.
    pub fn jobs_config(&self) -> String {
        format!("{}jobs:config", self.prefix)
    }

    /// The pub/sub channel announcing each job's end: "<id> done|failed".
    pub fn jobs_done(&self) -> String {
        format!("{}jobs:done", self.prefix)
    }

    /// The node-private canary channel.
    pub fn canary(&self, node: &str) -> String {
        format!("{}canary:{node}", self.prefix)
    }
}

/// The state of the Redis link, read by `/readyz` and the metrics.
#[derive(Debug, Default)]
pub struct LinkState {
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
    /// Publishes answered 503 because fewer than `redis.min_replicas_ack`
    /// replicas confirmed them in time.
    pub unacked: AtomicU64,
}

/// Work for the command thread.
#[derive(Debug)]
pub enum Command {
    /// Run the publish; answer `reply` through its reactor's mailbox.
    Publish { publish: Publish, reply: ConnRef },
    /// Load a channel's history (the sync with `token`): the newest
    /// events, or after a lost link everything after `after`.
    Load {
        channel: Arc<str>,
        token: u64,
        after: Option<u64>,
    },
}

/// A publish request, checked by the API.
#[derive(Debug)]
pub struct Publish {
    pub channel: String,
    /// One line of JSON.
    pub data: String,
    pub publish_id: Option<String>,
}

/// Why a command was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The command link is down.
    Down,
    /// The queue is full.
    Busy,
}

/// The market link's state, read by the metrics.
#[derive(Debug, Default)]
pub struct MarketLink {
    pub up: AtomicBool,
    pub reconnects: AtomicU64,
    /// Trades received from the upstream.
    pub trades: AtomicU64,
    /// Symbols subscribed upstream now.
    pub symbols: AtomicU64,
    /// Symbols wanted but refused (over the plan's limit).
    pub refused: AtomicU64,
    /// File descriptors the market link holds (see `diag::Owned`).
    pub fds: AtomicU64,
    /// The feed is the built-in simulator.
    pub simulated: AtomicBool,
    /// The built-in simulator's port once it serves the feed; 0: none
    /// (`/debug/fds` counts sockets on it as the market's).
    pub sim_port: AtomicU16,
    /// The circuit breaker is open: subscribers were told the upstream is
    /// unavailable.
    pub breaker_open: AtomicBool,
    /// Cluster mode: this node holds the market lease (and the upstream).
    pub lease_held: AtomicBool,
    /// Cluster mode: the fencing token of the lease as this node last saw
    /// it (its own while it holds it).
    pub fence: AtomicU64,
    /// Cluster mode: times this node took the lease.
    pub leases_taken: AtomicU64,
}

/// The command thread's ends of the two queues.
pub struct Queues {
    /// Publishes, from the reactors.
    pub commands: Receiver<Command>,
    /// History loads, from the pub/sub thread.
    pub loads: Receiver<Command>,
}

/// The reactors' handle on the bridge.
pub struct Redis {
    pub config: RedisConfig,
    pub link: LinkState,
    pub names: Names,
    /// This process in the cluster (its canary channel).
    pub node: String,
    /// Where the master is now (it moves under Sentinel).
    pub master: Arc<Master>,
    /// Redis Cluster: per-shard figures (empty otherwise).
    pub shards: ShardStats,
    commands: Sender<Command>,
    /// History loads, apart from publishes.
    loads: Sender<Command>,
    /// When a full queue was last logged (wall clock, ms).
    last_drop_log_ms: AtomicU64,
}

impl Redis {
    /// The handle, and the receiving ends of its two queues.
    pub fn new(config: RedisConfig, master: Arc<Master>) -> (Redis, Queues) {
        let (tx, rx) = crossbeam_channel::bounded(config.queue);
        let (loads_tx, loads_rx) = crossbeam_channel::bounded(config.queue);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let node = format!("{}-{nanos:x}", std::process::id());
        let names = match config.is_cluster() {
            true => Names::clustered(&config.prefix),
            false => Names::new(&config.prefix),
        };
        let redis = Redis {
            names,
            config,
            link: LinkState::default(),
            node,
            master,
            shards: ShardStats::default(),
            commands: tx,
            loads: loads_tx,
            last_drop_log_ms: AtomicU64::new(0),
        };
        let queues = Queues {
            commands: rx,
            loads: loads_rx,
        };
        (redis, queues)
    }

    /// Queues a command without waiting.
    pub fn submit(&self, cmd: Command) -> Result<(), Refused> {
        if !self.link.command_up.load(Ordering::Acquire) {
            return Err(Refused::Down);
        }
        // History loads have a queue of their own: a flood of subscribes
        // to new channels cannot fill the one publishes wait in.
        let queue = match cmd {
            Command::Publish { .. } => &self.commands,
            // A load that finds no room waits with its sender (the pub/sub
            // thread) and is offered again: nobody is refused.
            Command::Load { .. } => {
                return self.loads.try_send(cmd).map_err(|_| Refused::Busy);
            }
        };
        match queue.try_send(cmd) {
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

    /// Ready: both connections up (Redis Cluster: a pub/sub link to every
    /// master of the slot map) and a canary came back through pub/sub in
    /// time, recently. Else why not.
    pub fn ready(&self, now_ms: u64) -> Result<(), &'static str> {
        if !self.link.command_up.load(Ordering::Acquire) {
            return Err("the Redis command connection is down");
        }
        if !self.link.pubsub_up.load(Ordering::Acquire) {
            return Err(match self.names.is_cluster() {
                true => {
                    "a Redis Cluster master has no working pub/sub link (see redix_redis_shard_up)"
                }
                false => "the Redis pub/sub connection is down",
            });
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

/// Milliseconds of the wall clock (Redis stream ids use it too).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = Names::new("rx:");
        assert_eq!(n.stream("a"), "rx:s:a");
        assert_eq!(n.channel_of(&n.notify("trades:AAPL")), Some("trades:AAPL"));
        assert_eq!(n.channel_of("other:c:x"), None);
        assert_eq!(n.job("ab12"), "rx:job:ab12");
        assert_eq!(n.jobs_queue("ask"), "rx:jobs:ask");
        assert_eq!(n.jobs_done(), "rx:jobs:done");
        assert_eq!(n.seen("a", "p1"), "rx:p:p1");
        assert_eq!(n.last_id_of("a"), "rx:last");
        assert_eq!(n.market_lease(), "rx:market:lease");
        assert_eq!(n.market_interest(), "rx:market:interest");
    }

    #[test]
    fn cluster_names_share_the_channel_as_hash_tag() {
        let n = Names::clustered("rx:");
        let table = [
            (n.stream("a:b"), "rx:{a:b}:s"),
            (n.notify("a:b"), "rx:{a:b}:c"),
            (n.last_id_of("a:b"), "rx:{a:b}:last"),
            (n.seen("a:b", "p1"), "rx:{a:b}:p:p1"),
            (n.lost_of("a:b"), "rx:{a:b}:lost"),
            (n.channel_fence("a:b"), "rx:{a:b}:fence"),
            (n.market_lease(), "rx:{market}:lease"),
            (n.market_fence(), "rx:{market}:fence"),
            (n.market_interest(), "rx:{market}:interest"),
            (n.market_status(), "rx:{market}:status"),
        ];
        for (got, want) in table {
            assert_eq!(got, want);
        }
        for ch in ["a", "trades:AAPL", "x}y", "{z"] {
            assert_eq!(n.channel_of(&n.notify(ch)), Some(ch), "{ch:?}");
        }
        assert_eq!(n.channel_of("rx:c:a"), None);
        assert!(n.is_cluster() && !Names::new("rx:").is_cluster());
    }
}
