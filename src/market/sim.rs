//! A local Finnhub-protocol simulator: the market upstream for tests,
//! benchmarks and the embedded default.
//!
//! Threads: one acceptor (a non-blocking listener polled every
//! [`TICK`]) and one thread per connection, at most [`MAX_CONNECTIONS`].
//! Every loop has a deadline or a short socket timeout, so all threads
//! notice [`Sim`]'s drop within a few ticks; the drop joins the acceptor,
//! which joins every connection thread, and the listener and every socket
//! close with their threads.
//!
//! One port serves both: a request head for `/stats` or `/control/*` is
//! answered as plain HTTP; anything else is a WebSocket handshake
//! (`ws://host/?token=KEY`). Behaviour, and how it reproduces Finnhub:
//! - A token other than [`SimConfig::token`] is refused with HTTP 401
//!   before the upgrade; with `token: None` any token (or none) is accepted.
//! - One connection per token: a second connection with a token already
//!   connected is accepted and then both are closed (TCP shutdown, no close
//!   frame), as Finnhub does; the next connection with it works.
//! - Past `max_symbols` a subscribe is answered with
//!   `{"type":"error","msg":"Subscribing to too many symbols"}`; an
//!   unsubscribe frees a slot. Re-subscribing a subscribed symbol is a no-op.
//! - Trades: see `frames::Feed`; symbols starting with `SILENT` or named
//!   in `silent_symbols` never trade. `{"type":"ping"}` every `ping_ms`.
//! - Controls ([`Sim::drop_all`], [`Sim::set_stalled`],
//!   [`Sim::set_refusing`], or `POST /control/...`): `drop` shuts down
//!   every WebSocket connection; `stall` freezes them (nothing sent, input
//!   left unread; new connections complete the handshake and freeze too);
//!   `refuse` answers new WebSocket requests with HTTP 503 (`/stats` and
//!   `/control/*` keep working so an out-of-process test can undo it).

mod frames;
mod http;
mod session;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

pub use frames::TOO_MANY_SYMBOLS;

/// Connections (WebSocket and HTTP) served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 256;
/// How often idle loops look at the stop and control flags.
pub const TICK: Duration = Duration::from_millis(10);
/// Default for [`SimConfig::max_symbols`]: Finnhub's free plan.
pub const DEFAULT_MAX_SYMBOLS: usize = 50;
/// Default for [`SimConfig::trades_per_sec`], per subscribed symbol.
pub const DEFAULT_TRADES_PER_SEC: u32 = 10;
/// Default for [`SimConfig::ping_ms`].
pub const DEFAULT_PING_MS: u64 = 5_000;
/// Symbols with this prefix never trade.
pub const SILENT_PREFIX: &str = "SILENT";

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Listen address; default 127.0.0.1:0 (a free port, see [`Sim::addr`]).
    pub listen: SocketAddr,
    /// The one accepted token; `None` (the default) accepts any.
    pub token: Option<String>,
    /// Symbols per connection; default [`DEFAULT_MAX_SYMBOLS`].
    pub max_symbols: usize,
    /// Trades per second per subscribed symbol; default
    /// [`DEFAULT_TRADES_PER_SEC`]; 0 sends no trades.
    pub trades_per_sec: u32,
    /// Ping interval; default [`DEFAULT_PING_MS`]; 0 sends no pings.
    pub ping_ms: u64,
    /// Symbols that never trade, besides any starting with [`SILENT_PREFIX`].
    pub silent_symbols: Vec<String>,
    /// Identical trades inside a frame and identical frames re-sent
    /// 20–90 ms later; default true.
    pub duplicates: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: None,
            max_symbols: DEFAULT_MAX_SYMBOLS,
            trades_per_sec: DEFAULT_TRADES_PER_SEC,
            ping_ms: DEFAULT_PING_MS,
            silent_symbols: Vec::new(),
            duplicates: true,
        }
    }
}

impl SimConfig {
    fn is_silent(&self, symbol: &str) -> bool {
        symbol.starts_with(SILENT_PREFIX) || self.silent_symbols.iter().any(|s| s == symbol)
    }
}

/// What the simulator has seen; also served as `GET /stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// WebSocket connections open now.
    pub connections: usize,
    /// The most connections ever open at once.
    pub peak_connections: usize,
    /// Times a connection came with a token already connected (both
    /// were dropped, as Finnhub does).
    pub same_token_drops: u64,
    /// WebSocket handshakes completed since start.
    pub accepted: u64,
    /// Subscribe messages received, per symbol (refused ones included).
    pub subscribes: BTreeMap<String, u64>,
    /// Unsubscribe messages received, per symbol.
    pub unsubscribes: BTreeMap<String, u64>,
}

impl Stats {
    /// `{"connections":N,"peak_connections":N,"same_token_drops":N,
    /// "accepted":N,"subscribes":{..},"unsubscribes":{..}}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "connections": self.connections,
            "peak_connections": self.peak_connections,
            "same_token_drops": self.same_token_drops,
            "accepted": self.accepted,
            "subscribes": self.subscribes,
            "unsubscribes": self.unsubscribes,
        })
        .to_string()
    }
}

/// State shared by the acceptor, the connection threads and [`Sim`].
struct Shared {
    config: SimConfig,
    stop: AtomicBool,
    stalled: AtomicBool,
    refusing: AtomicBool,
    /// Bumped by `drop_all`; a session started under an older value closes.
    drop_generation: AtomicU64,
    /// Connection threads alive.
    live: AtomicUsize,
    stats: Mutex<Stats>,
    /// Token → the kill switch of the connection holding it.
    tokens: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

impl Shared {
    fn stats(&self) -> MutexGuard<'_, Stats> {
        // A panicked session thread must not take the simulator down with it.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tokens(&self) -> MutexGuard<'_, HashMap<String, Arc<AtomicBool>>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn drop_all(&self) {
        self.drop_generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// A running simulator; dropping it stops every thread and closes every socket.
pub struct Sim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// Binds `config.listen` and starts serving.
pub fn start(config: SimConfig) -> io::Result<Sim> {
    let listener = TcpListener::bind(config.listen)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        config,
        stop: AtomicBool::new(false),
        stalled: AtomicBool::new(false),
        refusing: AtomicBool::new(false),
        drop_generation: AtomicU64::new(0),
        live: AtomicUsize::new(0),
        stats: Mutex::new(Stats::default()),
        tokens: Mutex::new(HashMap::new()),
    });
    let acceptor = {
        let shared = shared.clone();
        thread::Builder::new()
            .name("finnhub-sim".into())
            .spawn(move || accept_loop(listener, shared))?
    };
    Ok(Sim {
        addr,
        shared,
        acceptor: Some(acceptor),
    })
}

impl Sim {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats().clone()
    }

    /// Closes every WebSocket connection now (TCP shutdown, no close frame).
    pub fn drop_all(&self) {
        self.shared.drop_all();
    }

    /// Keeps connections open but sends nothing and reads nothing.
    pub fn set_stalled(&self, stalled: bool) {
        self.shared.stalled.store(stalled, Ordering::SeqCst);
    }

    /// Answers new WebSocket requests with HTTP 503.
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut sessions: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        sessions.retain(|h| !h.is_finished());
        match listener.accept() {
            Ok((stream, _)) => {
                next_id += 1;
                if let Some(handle) = spawn_session(stream, &shared, next_id) {
                    sessions.push(handle);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(TICK),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("finnhub-sim: accept: {e}");
                thread::sleep(TICK * 10);
            }
        }
    }
    drop(listener);
    for handle in sessions {
        let _ = handle.join();
    }
}

fn spawn_session(stream: TcpStream, shared: &Arc<Shared>, id: u64) -> Option<JoinHandle<()>> {
    if shared.live.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
        log::debug!("finnhub-sim: {MAX_CONNECTIONS} connections: closing a new one");
        return None;
    }
    shared.live.fetch_add(1, Ordering::SeqCst);
    let shared2 = shared.clone();
    let spawned = thread::Builder::new()
        .name(format!("finnhub-sim-{id}"))
        .spawn(move || {
            session::serve(stream, &shared2, id);
            shared2.live.fetch_sub(1, Ordering::SeqCst);
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            log::warn!("finnhub-sim: spawn: {e}");
            shared.live.fetch_sub(1, Ordering::SeqCst);
            None
        }
    }
}

/// The `redix finnhub-sim` subcommand: starts, prints
/// `finnhub-sim listening on IP:PORT`, and runs until SIGTERM or SIGINT.
pub fn run_until_signal(config: SimConfig) -> io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use std::io::Write;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let sim = start(config)?;
    let mut out = io::stdout().lock();
    writeln!(out, "finnhub-sim listening on {}", sim.addr())?;
    out.flush()?;
    drop(out);
    if let Some(sig) = signals.forever().next() {
        log::info!("finnhub-sim: signal {sig}: stopping");
    }
    drop(sim);
    Ok(())
}
