//! The market bridge thread: one upstream WebSocket (`ws://`, or `wss://`
//! through rustls: see `connect`) whose subscriptions follow the hub's market
//! interest, the `trades:SYM` channels some reactor has subscribers of.
//!
//! - One upstream subscribe per symbol, whatever the number of clients:
//!   the hub counts subscribers per reactor, each reactor its own clients.
//!   A symbol nobody wants any more is unsubscribed after
//!   `market.linger_ms`; wanted again meanwhile, it stays.
//! - The plan's limit (`market.max_symbols`) is kept here: a symbol past
//!   it is not sent upstream, and its subscribers get a `symbol_limit`
//!   error; it is subscribed once a slot frees. An upstream "too many
//!   symbols" error (which names no symbol) is put on the last subscribe
//!   sent.
//! - Each upstream trade message becomes one event per symbol on
//!   `trades:SYM`, its data the array of that symbol's trades as received
//!   (identical prints are passed through: they can be real).
//! - The link is dead after `market.silence_ms` without any message (pings
//!   come irregularly); then, as after any failure, it reconnects with
//!   exponential backoff and full jitter and subscribes every wanted
//!   symbol again.
//!
//! The token goes into the URL's query only; nothing logs it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::{Message, WebSocket};

use crate::bridge::{Backoff, Quiet};
use crate::clock::Clock;
use crate::config::MarketConfig;
use crate::health::Beat;
use crate::hub::{Hub, MARKET_PREFIX};
use crate::link::MarketLink;
use crate::market::connect::{self, without_query, Stream};
use crate::market::lease::{Cluster, ClusterParts};
use crate::market::sim::{self, Sim, SimConfig};

/// How long one read waits, so interest changes go out promptly.
const READ_TIMEOUT: Duration = Duration::from_millis(50);
/// Connect and write timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the thread looks for a first `trades:*` subscriber before
/// starting the built-in simulator.
const INTEREST_POLL: Duration = Duration::from_millis(50);
/// Connections in a row that deliver nothing before the circuit breaker
/// opens.
const BREAKER_AFTER: u32 = 5;
/// Largest upstream message accepted.
const MAX_MESSAGE: usize = 4 << 20;

/// The market bridge's inputs.
pub struct Upstream {
    pub config: MarketConfig,
    pub hub: Arc<Hub>,
    pub clock: Clock,
    pub link: Arc<MarketLink>,
    /// Redis mode: the cluster shares one upstream (see `lease`).
    pub cluster: Option<ClusterParts>,
    /// This thread's heartbeat, for the watchdog.
    pub beat: Beat,
}

/// Starts the market bridge thread. Without `market.url` the feed is
/// the built-in simulator, started in-process when the first `trades:*`
/// subscriber comes (so a server nobody asks for trades holds none of its
/// sockets or threads).
pub fn start(up: Upstream) -> Result<(), String> {
    match up.config.enabled() {
        true => log::info!(
            "market upstream: {} (at most {} symbols)",
            without_query(&up.config.url),
            up.config.max_symbols
        ),
        false => log::info!(
            "market: no market.url; trades:* will be served by the built-in simulator (set market.simulator=false to turn it off)"
        ),
    }
    std::thread::Builder::new()
        .name("redix-market".into())
        .spawn(move || up.run())
        .map(|_| ())
        .map_err(|e| format!("spawn the market thread: {e}"))
}

impl Upstream {
    fn run(mut self) {
        let mut cluster = self.cluster.take().map(Cluster::new);
        let real = self.config.enabled();
        // The simulator, and in a cluster the lease, wait for somebody
        // here to want trades.
        if !real || cluster.is_some() {
            self.wait_for_interest();
        }
        // Held for the thread's life: the simulator stops when dropped.
        let mut sim: Option<Sim> = None;
        let cfg = &self.config;
        let mut backoff = Backoff::new(cfg.backoff_min_ms, cfg.backoff_max_ms);
        let mut quiet = Quiet::default();
        // Connections in a row that never delivered anything.
        let mut failures = 0u32;
        loop {
            if let Some(c) = cluster.as_mut() {
                self.wait_for_lease(c, sim.as_ref());
            }
            if !real && sim.is_none() {
                match self.start_simulator() {
                    Some(started) => sim = Some(started),
                    None => return self.beat.retire(),
                }
            }
            let why = match Session::open(&self, sim.as_ref(), cluster.as_mut()) {
                Ok(mut session) => {
                    self.link.up.store(true, Ordering::Release);
                    log::info!("market upstream connected");
                    let why = session.serve();
                    self.link.up.store(false, Ordering::Release);
                    self.link.symbols.store(0, Ordering::Relaxed);
                    if session.worked {
                        backoff.reset();
                        quiet.reset();
                        failures = 0;
                    }
                    why
                }
                Err(e) => e,
            };
            failures = failures.saturating_add(1);
            if failures >= BREAKER_AFTER {
                self.open_breaker(cluster.is_some());
            }
            let wait = backoff.next_wait_full();
            quiet.warn(format_args!(
                "market upstream: {why}; reconnecting in {wait:?}"
            ));
            self.link.reconnects.fetch_add(1, Ordering::Relaxed);
            self.pause(wait, cluster.as_mut(), sim.as_ref());
        }
    }
}

impl Upstream {
    fn wait_for_interest(&self) {
        while self.hub.market_interest().is_empty() {
            self.beat.sleep(INTEREST_POLL);
        }
    }

    /// Cluster mode: takes turns (sharing this node's interest, telling
    /// its subscribers the holder's status) until this node holds the
    /// lease.
    fn wait_for_lease(&self, cluster: &mut Cluster, sim: Option<&Sim>) {
        self.link.up.store(false, Ordering::Release);
        loop {
            // Not holding, a turn cannot lose a lease.
            let _ = cluster.turn(true);
            self.store_fds(cluster, sim, false);
            if cluster.holds() {
                return;
            }
            self.beat
                .sleep(cluster.until_due().max(Duration::from_millis(1)));
        }
    }

    /// Waits `wait` before reconnecting; in a cluster, renewing the lease
    /// meanwhile (returns early when it is lost).
    fn pause(&self, wait: Duration, cluster: Option<&mut Cluster>, sim: Option<&Sim>) {
        let Some(cluster) = cluster else {
            self.link.fds.store(sim_fds(sim), Ordering::Relaxed);
            self.beat.sleep(wait);
            return;
        };
        if !cluster.holds() {
            // Lost: waiting for the lease again sets the pace.
            return;
        }
        let end = Instant::now() + wait;
        while Instant::now() < end {
            cluster.own_status.breaker = self.link.breaker_open.load(Ordering::Acquire);
            if cluster.turn(false).is_err() {
                return;
            }
            self.store_fds(cluster, sim, false);
            let left = end.saturating_duration_since(Instant::now());
            self.beat
                .sleep(left.min(cluster.until_due()).max(Duration::from_millis(1)));
        }
    }

    /// The fds the market link holds: the upstream, the simulator's, the
    /// cluster's Redis connection.
    fn store_fds(&self, cluster: &Cluster, sim: Option<&Sim>, upstream: bool) {
        let fds = u64::from(upstream) + sim_fds(sim) + cluster.fds();
        self.link.fds.store(fds, Ordering::Relaxed);
    }

    /// Starts the built-in simulator and points the feed at it. `None`
    /// when it cannot start.
    fn start_simulator(&mut self) -> Option<Sim> {
        match sim::start(SimConfig::default()) {
            Ok(sim) => {
                log::warn!(
                    "market: serving SIMULATED trades from the built-in simulator on {} (no market.url)",
                    sim.addr()
                );
                self.config.url = format!("ws://{}", sim.addr());
                self.link.simulated.store(true, Ordering::Relaxed);
                self.link
                    .sim_port
                    .store(sim.addr().port(), Ordering::Relaxed);
                Some(sim)
            }
            Err(e) => {
                log::error!("market: the built-in simulator cannot start: {e}; no trades");
                None
            }
        }
    }
}

impl Upstream {
    /// After [`BREAKER_AFTER`] failures in a row: every `trades:*`
    /// subscriber is told once that the upstream is unavailable. It
    /// closes with the first message of a working link; data then simply
    /// flows again. Reconnecting goes on meanwhile, at the backoff cap.
    fn open_breaker(&self, clustered: bool) {
        if self.link.breaker_open.swap(true, Ordering::AcqRel) {
            return;
        }
        log::warn!(
            "market upstream: {BREAKER_AFTER} failures in a row; telling trades:* subscribers"
        );
        if clustered {
            // Every node tells its own, from the status the lease carries.
            return;
        }
        let message = "the market upstream is unreachable; trades resume when it is back";
        for channel in self.hub.market_interest() {
            self.hub
                .channel_error(&channel, "upstream_unavailable", message);
        }
    }
}

/// Fds the simulator holds in this process: its listener and one per
/// connection it serves.
fn sim_fds(sim: Option<&Sim>) -> u64 {
    sim.map_or(0, |s| 1 + s.stats().connections as u64)
}

/// One upstream connection.
struct Session<'a> {
    up: &'a Upstream,
    /// The built-in simulator, when it is the feed (for the fd count).
    sim: Option<&'a Sim>,
    socket: WebSocket<Stream>,
    /// Cluster mode: the lease this node holds.
    cluster: Option<&'a mut Cluster>,
    /// Subscribed upstream, and since when nobody wants it (ms).
    live: HashMap<Arc<str>, Option<u64>>,
    /// Wanted but over the limit: their subscribers were told.
    refused: HashSet<Arc<str>>,
    /// The last subscribe sent (an upstream limit error names none).
    last_subscribe: Option<Arc<str>>,
    last_message: Instant,
    /// A trade or a ping came: the link worked.
    worked: bool,
}

impl<'a> Session<'a> {
    fn open(
        up: &'a Upstream,
        sim: Option<&'a Sim>,
        cluster: Option<&'a mut Cluster>,
    ) -> Result<Session<'a>, String> {
        let mut config = tungstenite::protocol::WebSocketConfig::default();
        config.max_message_size = Some(MAX_MESSAGE);
        config.max_frame_size = Some(MAX_MESSAGE);
        let socket = connect::connect(&up.config, config, IO_TIMEOUT)?;
        socket
            .get_ref()
            .tcp()
            .set_read_timeout(Some(READ_TIMEOUT))
            .map_err(|e| format!("socket options: {e}"))?;
        Ok(Session {
            up,
            sim,
            socket,
            cluster,
            live: HashMap::new(),
            refused: HashSet::new(),
            last_subscribe: None,
            last_message: Instant::now(),
            worked: false,
        })
    }

    /// Runs until the link fails; returns why.
    fn serve(&mut self) -> String {
        let silence = Duration::from_millis(self.up.config.silence_ms);
        let mut synced: Option<Instant> = None;
        loop {
            self.up.beat.stamp();
            // Interest is read from the hub (under its lock) once a read
            // timeout at most, not once per upstream message.
            if synced.is_none_or(|t| t.elapsed() >= READ_TIMEOUT) {
                synced = Some(Instant::now());
                if let Err(e) = self.sync_interest() {
                    return e;
                }
            }
            match self.socket.read() {
                Ok(Message::Text(text)) => {
                    self.last_message = Instant::now();
                    if let Err(e) = self.on_text(text.as_str()) {
                        return e;
                    }
                }
                Ok(Message::Close(_)) => return "the upstream closed the connection".into(),
                Ok(_) => self.last_message = Instant::now(),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return scrub(&e.to_string(), self.up),
            }
            if self.last_message.elapsed() >= silence {
                return format!("no message for {silence:?}: the link is dead");
            }
        }
    }

    /// Subscribes what is newly wanted, unsubscribes what nobody wanted
    /// for the linger, and keeps to the plan's limit.
    fn sync_interest(&mut self) -> Result<(), String> {
        let now = self.up.clock.now_ms();
        let wanted = self.wanted()?;
        self.refused.retain(|s| wanted.contains(s));
        for (symbol, unwanted_since) in self.live.iter_mut() {
            *unwanted_since = match wanted.contains(symbol) {
                true => None,
                false => Some(unwanted_since.unwrap_or(now)),
            };
        }
        let linger = self.up.config.linger_ms;
        let done: Vec<Arc<str>> = self
            .live
            .iter()
            .filter(|(_, since)| since.is_some_and(|t| now.saturating_sub(t) >= linger))
            .map(|(s, _)| s.clone())
            .collect();
        for symbol in done {
            self.send("unsubscribe", &symbol)?;
            self.live.remove(&symbol);
        }
        let mut new: Vec<&Arc<str>> = wanted
            .iter()
            .filter(|s| !self.live.contains_key(*s))
            .collect();
        new.sort();
        for symbol in new {
            if self.live.len() >= self.up.config.max_symbols {
                self.refuse(symbol, "the upstream plan's symbol limit is reached");
                continue;
            }
            self.send("subscribe", symbol)?;
            self.refused.remove(symbol);
            self.live.insert(symbol.clone(), None);
            self.last_subscribe = Some(symbol.clone());
        }
        let link = &self.up.link;
        match self.cluster.as_deref() {
            Some(c) => self.up.store_fds(c, self.sim, true),
            None => link.fds.store(1 + sim_fds(self.sim), Ordering::Relaxed),
        }
        link.symbols
            .store(self.live.len() as u64, Ordering::Relaxed);
        link.refused
            .store(self.refused.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The symbols wanted: here, or in a cluster by any node (this node
    /// holds the lease: renew it, and share the status).
    fn wanted(&mut self) -> Result<HashSet<Arc<str>>, String> {
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return Ok(self
                .up
                .hub
                .market_interest()
                .iter()
                .filter_map(|c| c.strip_prefix(MARKET_PREFIX).map(Arc::from))
                .collect());
        };
        cluster.own_status.refused = self.refused.iter().map(|s| s.to_string()).collect();
        cluster.own_status.breaker = self.up.link.breaker_open.load(Ordering::Acquire);
        cluster.turn(false)?;
        Ok(cluster.wanted().cloned().collect())
    }

    /// Tells the subscribers of `symbol` (once) that it is not served (in
    /// a cluster, every node tells its own from the lease's status).
    fn refuse(&mut self, symbol: &Arc<str>, why: &str) {
        if !self.refused.insert(symbol.clone()) || self.cluster.is_some() {
            return;
        }
        let channel: Arc<str> = Arc::from(format!("{MARKET_PREFIX}{symbol}"));
        let message = format!("{symbol}: {why}; it is subscribed once a slot frees");
        self.up
            .hub
            .channel_error(&channel, "symbol_limit", &message);
    }

    fn send(&mut self, kind: &str, symbol: &str) -> Result<(), String> {
        let text = serde_json::json!({"type": kind, "symbol": symbol}).to_string();
        self.socket
            .send(Message::text(text))
            .map_err(|e| format!("{kind} {symbol}: {}", scrub(&e.to_string(), self.up)))
    }

    /// `Err` when the link must close (a cluster's lease is lost).
    fn on_text(&mut self, text: &str) -> Result<(), String> {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            log::debug!(
                "market upstream: a message that is not JSON ({} bytes)",
                text.len()
            );
            return Ok(());
        };
        match msg["type"].as_str() {
            Some("trade") => return self.on_trades(&msg["data"]),
            Some("ping") => self.working(),
            Some("error") => self.on_error(msg["msg"].as_str().unwrap_or("unknown error")),
            other => log::debug!("market upstream: message of type {other:?} ignored"),
        }
        Ok(())
    }

    /// One event per symbol of the message: the array of its trades;
    /// published here, or in a cluster republished through Redis.
    fn on_trades(&mut self, data: &Value) -> Result<(), String> {
        let Some(trades) = data.as_array() else {
            return Ok(());
        };
        self.working();
        let mut by_symbol: HashMap<&str, Vec<&Value>> = HashMap::new();
        for trade in trades {
            if let Some(symbol) = trade["s"].as_str() {
                by_symbol.entry(symbol).or_default().push(trade);
            }
        }
        let mut events = Vec::with_capacity(by_symbol.len());
        for (symbol, trades) in by_symbol {
            if !self.live.contains_key(symbol) {
                continue;
            }
            self.up
                .link
                .trades
                .fetch_add(trades.len() as u64, Ordering::Relaxed);
            let channel = format!("{MARKET_PREFIX}{symbol}");
            if crate::hub::check_channel(&channel).is_err() {
                continue;
            }
            let data = Value::Array(trades.into_iter().cloned().collect()).to_string();
            events.push((channel, data));
        }
        if let Some(cluster) = self.cluster.as_deref_mut() {
            return match events.is_empty() {
                true => Ok(()),
                false => cluster.publish(events),
            };
        }
        let now = self.up.clock.now_ms();
        for (channel, data) in events {
            self.up.hub.publish(&channel, &data, None, now);
        }
        Ok(())
    }

    /// The link delivers: it worked, and an open breaker closes.
    fn working(&mut self) {
        self.worked = true;
        if self.up.link.breaker_open.swap(false, Ordering::AcqRel) {
            log::info!("market upstream delivers again: breaker closed");
        }
    }

    fn on_error(&mut self, message: &str) {
        if message.contains("too many symbols") {
            if let Some(symbol) = self.last_subscribe.take() {
                self.live.remove(&symbol);
                self.refuse(&symbol, "the upstream refused it (too many symbols)");
                return;
            }
        }
        log::warn!("market upstream error: {message}");
    }
}

/// An error's text with the token taken out, should a library echo the URL.
fn scrub(text: &str, up: &Upstream) -> String {
    connect::scrub(text, &up.config.token)
}
