//! Configuration: defaults < TOML file < environment < command line.
//!
//! Every key lives in [`Config`] with its default in a `DEFAULT_*` constant.
//! The three sources are merged as TOML tables before one typed
//! deserialisation, so an invalid value fails the same way wherever it came
//! from: a message naming the key, and exit code 2 from `main`.
//!
//! Environment: `REDIX_<SECTION>_<KEY>` (e.g. `REDIX_LIMITS_SSE_PER_IP=40`)
//! or `REDIX_<KEY>` for top-level keys (`REDIX_LISTEN`). `REDIX_API_KEY`
//! adds comma-separated keys to `auth.keys`. The command line has flags for
//! the common keys and `--set section.key=value` for any other.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

mod auth;
mod jobs;
mod limits;
mod sources;
mod validate;

pub use auth::*;
pub use jobs::JobsConfig;
pub use limits::*;
use sources::{apply_cli, apply_env};
pub use sources::{Cli, FinnhubSimArgs, Subcommand};

/// Default listen address: loopback only, so a fresh `cargo run` is not exposed.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4000";
/// Listen backlog passed to `listen(2)` (the kernel caps it at `somaxconn`).
pub const DEFAULT_BACKLOG: i32 = 4096;
/// WebSocket subscribe/unsubscribe commands per connection per minute,
/// and at once.
pub const DEFAULT_WS_SUBSCRIBES_PER_MIN: u32 = 600;
pub const DEFAULT_WS_SUBSCRIBE_BURST: u32 = 128;
/// Market: a symbol nobody asks for is unsubscribed upstream after this.
pub const DEFAULT_MARKET_LINGER_MS: u64 = 30_000;
/// Market: no upstream message for this long means the link is dead.
pub const DEFAULT_MARKET_SILENCE_MS: u64 = 90_000;
/// Market: symbols per upstream connection (Finnhub's free plan).
pub const DEFAULT_MARKET_MAX_SYMBOLS: usize = 50;
/// Market: reconnect backoff (full jitter) from this, doubling up to the cap.
pub const DEFAULT_MARKET_BACKOFF_MIN_MS: u64 = 100;
pub const DEFAULT_MARKET_BACKOFF_MAX_MS: u64 = 30_000;
/// Cluster mode: the market lease's time to live (the most the upstream
/// stays without a holder after its holder dies).
pub const DEFAULT_MARKET_LEASE_MS: u64 = 10_000;
/// SSE heartbeat (`: ping`) interval.
pub const DEFAULT_HEARTBEAT_MS: u64 = 15_000;
/// Base SSE `retry:` sent as a stream's first bytes.
pub const DEFAULT_RETRY_MS: u64 = 2_000;
/// Random extra added to `retry:` so reconnects spread out.
pub const DEFAULT_RETRY_JITTER_MS: u64 = 3_000;
/// Server ping interval on WebSocket connections.
pub const DEFAULT_WS_PING_MS: u64 = 30_000;
/// A WebSocket silent this long (no frame at all) is closed.
pub const DEFAULT_WS_IDLE_TIMEOUT_MS: u64 = 60_000;
/// A client message (all its fragments) must be complete this long after
/// its first frame began.
pub const DEFAULT_WS_MESSAGE_TIMEOUT_MS: u64 = 30_000;
/// Largest WebSocket message a client may send (inflated size); larger closes with 1009.
pub const DEFAULT_WS_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Subscriptions one WebSocket connection may hold.
pub const DEFAULT_WS_MAX_SUBSCRIPTIONS: usize = 128;
/// Events smaller than this go uncompressed even to permessage-deflate clients.
pub const DEFAULT_WS_DEFLATE_MIN_BYTES: usize = 64;
/// Events each channel keeps for resuming clients.
pub const DEFAULT_HISTORY_MAX_EVENTS: usize = 100;
/// How long an event stays in its channel's history.
pub const DEFAULT_HISTORY_MAX_AGE_MS: u64 = 300_000;
/// How often expired history and idle channels are swept.
pub const DEFAULT_HISTORY_SWEEP_MS: u64 = 60_000;
/// Channels the hub tracks at most (with history or subscribers).
pub const DEFAULT_HISTORY_MAX_CHANNELS: usize = 100_000;
/// Bytes all channel histories hold together at most; past it the oldest
/// events go first, whatever their channel.
pub const DEFAULT_HISTORY_MAX_BYTES: usize = 256 << 20;
/// How long a publisher's `id` is remembered for deduplication.
pub const DEFAULT_DEDUPE_TTL_MS: u64 = 300_000;
/// Publisher ids remembered at most.
pub const DEFAULT_DEDUPE_MAX: usize = 100_000;
/// Events a batch holds at most before it goes out early.
pub const DEFAULT_BATCH_MAX_EVENTS: usize = 100;
/// Channels one SSE stream may name.
pub const DEFAULT_MAX_CHANNELS: usize = 32;
/// Data events a connection's write queue may hold.
pub const DEFAULT_QUEUE_MAX_EVENTS: usize = 500;
/// Bytes a connection's write queue may hold.
pub const DEFAULT_QUEUE_MAX_BYTES: usize = 256 * 1024;
/// Overflow warnings after which a slow consumer is disconnected.
pub const DEFAULT_SLOW_WARNINGS: u32 = 10;
/// Under load, a stream is written at most once per this window.
pub const DEFAULT_COALESCE_MS: u64 = 40;
/// Deliveries/s per reactor from which writes coalesce.
pub const DEFAULT_COALESCE_ABOVE: u64 = 100_000;
/// How long a shutdown waits for queued bytes to drain.
pub const DEFAULT_DRAIN_MS: u64 = 10_000;
/// How long a connection we are closing may take to read our last bytes.
pub const DEFAULT_LINGER_MS: u64 = 2_000;
/// Prefix of every Redis key and pub/sub channel redix uses.
pub const DEFAULT_REDIS_PREFIX: &str = "redix:";
/// Connect, read and write timeout of one Redis command.
pub const DEFAULT_REDIS_TIMEOUT_MS: u64 = 1_000;
/// How long a request may wait for Redis (a publish, a channel loading).
pub const DEFAULT_REDIS_WAIT_MS: u64 = 5_000;
/// Publishes and channel loads queued for the command connection.
pub const DEFAULT_REDIS_QUEUE: usize = 4_096;
/// Interval of the readiness canary.
pub const DEFAULT_REDIS_CANARY_MS: u64 = 500;
/// The canary must come back through pub/sub within this for `/readyz`.
pub const DEFAULT_REDIS_READY_WITHIN_MS: u64 = 2_000;
/// Reconnect backoff: first wait and cap (each wait gets jitter).
pub const DEFAULT_REDIS_BACKOFF_MIN_MS: u64 = 50;
pub const DEFAULT_REDIS_BACKOFF_MAX_MS: u64 = 2_000;
/// Replicas that must confirm a publish (`WAIT`) before it is
/// acknowledged; 0: acknowledged once the master has it (no `WAIT`).
pub const DEFAULT_REDIS_MIN_REPLICAS_ACK: u32 = 0;
/// How long a publish waits for its replicas before it answers 503.
pub const DEFAULT_REDIS_ACK_TIMEOUT_MS: u64 = 500;
/// The Sentinel name of the monitored master.
pub const DEFAULT_REDIS_MASTER_NAME: &str = "mymaster";

/// The whole configuration of one redix process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address every reactor listens on (`SO_REUSEPORT`). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Reactor threads; 0 means one per available core.
    pub workers: usize,
    /// `listen(2)` backlog.
    pub backlog: i32,
    /// `off`, `error`, `warn`, `info`, `debug` or `trace`; `REDIX_LOG`
    /// overrides it at start; SIGHUP applies a new value.
    pub log_level: String,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub sse: SseConfig,
    pub ws: WsConfig,
    pub queue: QueueConfig,
    pub history: HistoryConfig,
    pub publish: PublishConfig,
    pub batch: BatchConfig,
    pub tcp: TcpConfig,
    pub shutdown: ShutdownConfig,
    pub debug: DebugConfig,
    pub redis: RedisConfig,
    pub market: MarketConfig,
    pub jobs: JobsConfig,
}

/// Redis mode: with `url` set, publishes, history and fan-out go through
/// Redis, so several nodes serve one consistent set of channels.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`; empty runs embedded.
    pub url: String,
    pub prefix: String,
    pub timeout_ms: u64,
    pub wait_ms: u64,
    pub queue: usize,
    pub canary_ms: u64,
    pub ready_within_ms: u64,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// A publish is acknowledged only once this many replicas confirmed
    /// it (`WAIT n ack_timeout_ms`); else it answers 503 and the
    /// publisher retries with its publish id. Default 0: no `WAIT`.
    pub min_replicas_ack: u32,
    /// How long a publish waits for `min_replicas_ack` replicas; must be
    /// below `wait_ms`. Default 500.
    pub ack_timeout_ms: u64,
    /// Sentinels (`host:port`) that name the master; with them the host
    /// and port of `url` are ignored (its user, password and database
    /// still apply). Default empty: `url` is the master.
    pub sentinels: Vec<String>,
    /// The master's name in Sentinel. Default `mymaster`.
    pub master_name: String,
    /// Redis Cluster: seed nodes (`redis://[user:password@]host:port`);
    /// the rest of the cluster is found from them. Exclusive with `url`
    /// and `sentinels`. Default empty: no cluster.
    pub cluster: Vec<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            prefix: DEFAULT_REDIS_PREFIX.into(),
            timeout_ms: DEFAULT_REDIS_TIMEOUT_MS,
            wait_ms: DEFAULT_REDIS_WAIT_MS,
            queue: DEFAULT_REDIS_QUEUE,
            canary_ms: DEFAULT_REDIS_CANARY_MS,
            ready_within_ms: DEFAULT_REDIS_READY_WITHIN_MS,
            backoff_min_ms: DEFAULT_REDIS_BACKOFF_MIN_MS,
            backoff_max_ms: DEFAULT_REDIS_BACKOFF_MAX_MS,
            min_replicas_ack: DEFAULT_REDIS_MIN_REPLICAS_ACK,
            ack_timeout_ms: DEFAULT_REDIS_ACK_TIMEOUT_MS,
            sentinels: Vec::new(),
            master_name: DEFAULT_REDIS_MASTER_NAME.into(),
            cluster: Vec::new(),
        }
    }
}

/// The market upstream (a Finnhub-protocol trade WebSocket).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketConfig {
    /// `ws://host[:port]` or `wss://host[:port]` (TLS through rustls,
    /// the certificate checked against the URL's host) of the upstream,
    /// with an optional path and query; empty: no market feed.
    pub url: String,
    /// The API key, sent as `?token=`; never logged.
    pub token: String,
    /// A PEM file of extra root certificates trusted for a `wss://`
    /// upstream (a private upstream, tests), on top of the built-in
    /// Mozilla roots. Default empty: the built-in roots only. Checked at
    /// start-up: unreadable or without a certificate, redix does not start.
    pub ca_file: String,
    /// A symbol nobody asks for any more is unsubscribed after this long.
    pub linger_ms: u64,
    /// No message (trade, ping) for this long: the link is dead.
    pub silence_ms: u64,
    /// Symbols one upstream connection may hold (the plan's limit).
    pub max_symbols: usize,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Without `url`: serve `trades:*` from the built-in simulator,
    /// started at the first subscriber (a demo feed; in Redis mode by the
    /// lease holder).
    pub simulator: bool,
    /// Redis mode: the lease on the cluster's one upstream connection
    /// lives this long unless renewed (every third of it); the upstream
    /// moves to another node within about this long when its holder dies.
    pub lease_ms: u64,
}

impl Default for MarketConfig {
    fn default() -> Self {
        MarketConfig {
            url: String::new(),
            token: String::new(),
            ca_file: String::new(),
            linger_ms: DEFAULT_MARKET_LINGER_MS,
            silence_ms: DEFAULT_MARKET_SILENCE_MS,
            max_symbols: DEFAULT_MARKET_MAX_SYMBOLS,
            backoff_min_ms: DEFAULT_MARKET_BACKOFF_MIN_MS,
            backoff_max_ms: DEFAULT_MARKET_BACKOFF_MAX_MS,
            simulator: true,
            lease_ms: DEFAULT_MARKET_LEASE_MS,
        }
    }
}

impl MarketConfig {
    /// A real upstream is configured.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// A market feed runs: the upstream, or else (embedded mode) the
    /// built-in simulator.
    pub fn feed(&self) -> bool {
        self.enabled() || self.simulator
    }
}

impl RedisConfig {
    /// Redis mode: a master URL, sentinels that name the master, or the
    /// seed nodes of a Redis Cluster.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty() || !self.sentinels.is_empty() || self.is_cluster()
    }

    /// Redis Cluster mode (`redis.cluster`).
    pub fn is_cluster(&self) -> bool {
        !self.cluster.is_empty()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseConfig {
    pub heartbeat_ms: u64,
    pub retry_ms: u64,
    pub retry_jitter_ms: u64,
    pub max_channels: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    pub ping_ms: u64,
    pub idle_timeout_ms: u64,
    /// A client message must be complete this long after it began.
    pub message_timeout_ms: u64,
    /// Subscribe/unsubscribe commands per connection per minute; 0 turns
    /// the rate off.
    pub subscribes_per_min: u32,
    pub subscribe_burst: u32,
    pub max_message_bytes: usize,
    pub max_subscriptions: usize,
    /// Offer permessage-deflate to clients that ask for it.
    pub deflate: bool,
    pub deflate_min_bytes: usize,
    /// Allowed `Origin` values for WebSockets only; empty allows any. Set,
    /// it also refuses an upgrade without `Origin` (its meaning before
    /// `auth.allowed_origins`, which covers streams too, and is kept).
    pub allowed_origins: Vec<String>,
}

/// Per-channel history for resuming clients.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Events kept per channel; 0 keeps none (every resume is a reset).
    pub max_events: usize,
    pub max_age_ms: u64,
    pub sweep_ms: u64,
    pub max_channels: usize,
    /// Bytes of every channel's history together (both encodings of each
    /// event); the oldest events are evicted first.
    pub max_bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            max_events: DEFAULT_HISTORY_MAX_EVENTS,
            max_age_ms: DEFAULT_HISTORY_MAX_AGE_MS,
            sweep_ms: DEFAULT_HISTORY_SWEEP_MS,
            max_channels: DEFAULT_HISTORY_MAX_CHANNELS,
            max_bytes: DEFAULT_HISTORY_MAX_BYTES,
        }
    }
}

/// Batching for clients that ask for it (`?batch=1`). Off while
/// `window_ms` is 0; 50 is a good first value.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    pub window_ms: u64,
    pub max_events: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            window_ms: 0,
            max_events: DEFAULT_BATCH_MAX_EVENTS,
        }
    }
}

/// Publishing.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    pub dedupe_ttl_ms: u64,
    pub dedupe_max: usize,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            dedupe_ttl_ms: DEFAULT_DEDUPE_TTL_MS,
            dedupe_max: DEFAULT_DEDUPE_MAX,
        }
    }
}

/// Diagnostics that are off in production.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Serve `/ws/echo`, which echoes every message (for conformance suites).
    pub ws_echo: bool,
    /// Serve `POST /debug/wedge?ms=N` (admin scope), which blocks the
    /// reactor that handles it for N ms (at most 60 s): a test hook for
    /// the watchdog. Never enable it in production.
    pub wedge: bool,
    /// Serve the test hooks (`POST /debug/leak-fd`, which opens a socket
    /// nothing owns, for the `/debug/fds` test). Debug builds only: a
    /// release build refuses to start with it.
    pub test_hooks: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    pub max_events: usize,
    pub max_bytes: usize,
    pub slow_warnings: u32,
    /// `trades:*` events are conflated for a full queue (a stalled reader
    /// keeps the newest per symbol) instead of dropped and counted as slow.
    pub conflate_trades: bool,
    /// Under load (see `coalesce_above`), each stream is written at most
    /// once per this many ms; 0 writes every turn.
    pub coalesce_ms: u64,
    /// Deliveries/s per reactor from which stream writes coalesce (and
    /// only while its streams get two or more events per window).
    pub coalesce_above: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TcpConfig {
    /// `SO_SNDBUF` for accepted sockets in bytes; 0 keeps the kernel's autotuning.
    pub send_buffer: usize,
    /// `TCP_NODELAY` on accepted sockets.
    pub nodelay: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    pub drain_ms: u64,
    pub linger_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().unwrap_or_else(|_| unreachable!()),
            workers: 0,
            backlog: DEFAULT_BACKLOG,
            log_level: "info".into(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            sse: SseConfig::default(),
            ws: WsConfig::default(),
            queue: QueueConfig::default(),
            history: HistoryConfig::default(),
            publish: PublishConfig::default(),
            batch: BatchConfig::default(),
            tcp: TcpConfig::default(),
            shutdown: ShutdownConfig::default(),
            debug: DebugConfig::default(),
            redis: RedisConfig::default(),
            market: MarketConfig::default(),
            jobs: JobsConfig::default(),
        }
    }
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            ping_ms: DEFAULT_WS_PING_MS,
            idle_timeout_ms: DEFAULT_WS_IDLE_TIMEOUT_MS,
            message_timeout_ms: DEFAULT_WS_MESSAGE_TIMEOUT_MS,
            subscribes_per_min: DEFAULT_WS_SUBSCRIBES_PER_MIN,
            subscribe_burst: DEFAULT_WS_SUBSCRIBE_BURST,
            max_message_bytes: DEFAULT_WS_MAX_MESSAGE_BYTES,
            max_subscriptions: DEFAULT_WS_MAX_SUBSCRIPTIONS,
            deflate: true,
            deflate_min_bytes: DEFAULT_WS_DEFLATE_MIN_BYTES,
            allowed_origins: Vec::new(),
        }
    }
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            retry_ms: DEFAULT_RETRY_MS,
            retry_jitter_ms: DEFAULT_RETRY_JITTER_MS,
            max_channels: DEFAULT_MAX_CHANNELS,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_events: DEFAULT_QUEUE_MAX_EVENTS,
            max_bytes: DEFAULT_QUEUE_MAX_BYTES,
            slow_warnings: DEFAULT_SLOW_WARNINGS,
            conflate_trades: true,
            coalesce_ms: DEFAULT_COALESCE_MS,
            coalesce_above: DEFAULT_COALESCE_ABOVE,
        }
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            send_buffer: 0,
            nodelay: true,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_ms: DEFAULT_DRAIN_MS,
            linger_ms: DEFAULT_LINGER_MS,
        }
    }
}

/// Command line. Flags left out fall back to the environment, then the file.
/// A configuration problem, reported at start with the key it concerns.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

pub(crate) type Table = toml::Table;

impl Config {
    /// Builds the configuration from the command line, the process
    /// environment and the file the command line or environment names.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("REDIX_"))
            .collect();
        Self::from_sources(cli, &env)
    }

    /// [`Config::load`] with an explicit environment (for tests).
    pub fn from_sources(cli: &Cli, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let mut table = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
                text.parse::<Table>()
                    .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?
            }
            None => Table::new(),
        };
        apply_env(&mut table, env)?;
        apply_cli(&mut table, cli)?;
        let text = toml::to_string(&table).map_err(|e| ConfigError(format!("config: {e}")))?;
        let config: Config =
            toml::from_str(&text).map_err(|e| ConfigError(format!("config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Reactor threads to start.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The keys allowed to publish and to read admin endpoints.
    pub fn keys_for(&self, scope: Scope) -> Vec<String> {
        let scoped = match scope {
            Scope::Publish => &self.auth.publish_keys,
            Scope::Admin => &self.auth.admin_keys,
        };
        self.auth.keys.iter().chain(scoped).cloned().collect()
    }
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Publish,
    Admin,
}

#[cfg(test)]
mod tests;
