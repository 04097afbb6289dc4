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
use crate::hub::{Hub, MARKET_PREFIX};
use crate::link::MarketLink;
use crate::market::connect::{self, without_query, Stream};
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
        // Held for the thread's life: the simulator stops when dropped.
        let sim = match self.config.enabled() {
            true => None,
            false => match self.start_simulator() {
                Some(sim) => Some(sim),
                None => return,
            },
        };
        let cfg = &self.config;
        let mut backoff = Backoff::new(cfg.backoff_min_ms, cfg.backoff_max_ms);
        let mut quiet = Quiet::default();
        // Connections in a row that never delivered anything.
        let mut failures = 0u32;
        loop {
            let why = match Session::open(&self, sim.as_ref()) {
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
                self.open_breaker();
            }
            self.link
                .fds
                .store(sim_fds(sim.as_ref()), Ordering::Relaxed);
            let wait = backoff.next_wait_full();
            quiet.warn(format_args!(
                "market upstream: {why}; reconnecting in {wait:?}"
            ));
            self.link.reconnects.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(wait);
        }
    }
}

impl Upstream {
    /// Waits for the first `trades:*` subscriber, then starts the built-in
    /// simulator and points the feed at it. `None` when it cannot start.
    fn start_simulator(&mut self) -> Option<Sim> {
        while self.hub.market_interest().is_empty() {
            std::thread::sleep(INTEREST_POLL);
        }
        match sim::start(SimConfig::default()) {
            Ok(sim) => {
                log::warn!(
                    "market: serving SIMULATED trades from the built-in simulator on {} (no market.url)",
                    sim.addr()
                );
                self.config.url = format!("ws://{}", sim.addr());
                self.link.simulated.store(true, Ordering::Relaxed);
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
    fn open_breaker(&self) {
        if self.link.breaker_open.swap(true, Ordering::AcqRel) {
            return;
        }
        log::warn!(
            "market upstream: {BREAKER_AFTER} failures in a row; telling trades:* subscribers"
        );
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
    fn open(up: &'a Upstream, sim: Option<&'a Sim>) -> Result<Session<'a>, String> {
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
                    self.on_text(text.as_str());
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
        let wanted: HashSet<Arc<str>> = self
            .up
            .hub
            .market_interest()
            .iter()
            .filter_map(|c| c.strip_prefix(MARKET_PREFIX).map(Arc::from))
            .collect();
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
        link.fds.store(1 + sim_fds(self.sim), Ordering::Relaxed);
        link.symbols
            .store(self.live.len() as u64, Ordering::Relaxed);
        link.refused
            .store(self.refused.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Tells the subscribers of `symbol` (once) that it is not served.
    fn refuse(&mut self, symbol: &Arc<str>, why: &str) {
        if !self.refused.insert(symbol.clone()) {
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

    fn on_text(&mut self, text: &str) {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            log::debug!(
                "market upstream: a message that is not JSON ({} bytes)",
                text.len()
            );
            return;
        };
        match msg["type"].as_str() {
            Some("trade") => self.on_trades(&msg["data"]),
            Some("ping") => self.working(),
            Some("error") => self.on_error(msg["msg"].as_str().unwrap_or("unknown error")),
            other => log::debug!("market upstream: message of type {other:?} ignored"),
        }
    }

    /// One event per symbol of the message: the array of its trades.
    fn on_trades(&mut self, data: &Value) {
        let Some(trades) = data.as_array() else {
            return;
        };
        self.working();
        let mut by_symbol: HashMap<&str, Vec<&Value>> = HashMap::new();
        for trade in trades {
            if let Some(symbol) = trade["s"].as_str() {
                by_symbol.entry(symbol).or_default().push(trade);
            }
        }
        let now = self.up.clock.now_ms();
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
            self.up.hub.publish(&channel, &data, None, now);
        }
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
