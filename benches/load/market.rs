//! The market scenario (`--scenario market`): a `redix finnhub-sim` process makes
//! `--market-rate` trades/s for each of `--market-symbols` symbols; redix, started with
//! `market.url`/`market.token` pointing at it, subscribes upstream once per symbol and fans the
//! trades out to `--subs` subscribers spread evenly over the symbols (connection i on symbol
//! i mod S), over SSE or WebSocket.
//!
//! Measured over `--duration` s once every subscriber is ready and trades flow: trades
//! delivered per second (one delivery = one trade in one client's event; an event may carry
//! several trades), upstream → client latency from each trade's `"t"` (ms since the epoch, set
//! by the simulator when it made the trade: the figures have ms resolution, and since `"t"` is
//! truncated to the ms they read on average ~0.5 ms high), redix's CPU per delivery (Δ
//! utime+stime / deliveries), its RSS, the simulator's CPU, and from redix's `/metrics/prom`
//! the trades it received upstream and the events it conflated for slow readers.
//! Trades made before the window opened are counted apart (`stale`), never as deliveries.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::{Args, Mode, Transport};
use crate::deployment::Deployment;
use crate::fanout::per_delivery_us;
use crate::hist::Histogram;
use crate::now_ns;
use crate::output::label;
use crate::peers::http_get;
use crate::server::{Kind, Server};
use crate::support::proc::{box_busy_pct, box_cpu, clk_tck, cpu_ticks, rss_kib};
use crate::support::spawn::{interrupted, listening_addr_after, spawn_tied};
use crate::worker::{ConnSet, SrcAlloc};
use crate::Res;

pub struct MarketResult {
    pub subs: usize,
    pub ready: usize,
    pub symbols: usize,
    /// trades/s per symbol asked of the simulator
    pub rate: u32,
    pub window_s: f64,
    /// trades delivered to clients in the window (made after it opened)
    pub delivered: u64,
    pub stale: u64,
    pub dropped: usize,
    pub slow_closed: usize,
    /// trades redix received upstream in the window (`redix_market_trades_total`)
    pub upstream: Option<f64>,
    /// events conflated in full queues in the window (`redix_events_conflated_total`)
    pub conflated: Option<f64>,
    /// upstream → client, µs (from ms timestamps)
    pub hist: Histogram,
    pub cpu_ms: f64,
    pub rss_before: u64,
    pub rss_end: u64,
    pub sim_cpu_ms: f64,
    pub sim_rss: u64,
    pub loadgen_cpu_pct: f64,
    pub box_busy_pct: f64,
    pub first_err: Option<String>,
}

impl MarketResult {
    pub fn per_s(&self, n: f64) -> f64 {
        n / self.window_s.max(1e-9)
    }
    /// what the clients would get if every trade the simulator was asked for reached all of them
    pub fn nominal_per_s(&self) -> f64 {
        self.rate as f64 * self.ready as f64
    }
    pub fn cpu_per_delivery_us(&self) -> f64 {
        per_delivery_us(self.cpu_ms, self.delivered)
    }
}

/// The simulator's symbols: SYM000, SYM001, …
pub fn symbols(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("SYM{i:03}")).collect()
}

/// `redix finnhub-sim --listen 127.0.0.1:0 --token T --rate R --max-symbols S`, tied to the
/// bench; its stderr goes to finnhub-sim-load.stderr next to the binary.
pub fn start_sim(a: &Args) -> Res<Server> {
    let bin = &a.redix_bin;
    let log = bin
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("finnhub-sim-load.stderr");
    let errf = fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args(["finnhub-sim", "--listen", "127.0.0.1:0", "--token"])
        .arg(&a.market_token)
        .args(["--rate", &a.market_rate.to_string()])
        .args(["--max-symbols", &a.market_symbols.max(1).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(errf));
    if std::env::var_os("REDIX_LOG").is_none() {
        cmd.env("REDIX_LOG", "warn");
    }
    let mut child = spawn_tied(&mut cmd, bin, "")?;
    let pid = child.id() as i32;
    let rx = listening_addr_after(
        child.stdout.take().ok_or("no stdout")?,
        "finnhub-sim listening on ",
    )?;
    let mut srv = Server {
        kind: Kind::FinnhubSim,
        addr: "127.0.0.1:0".parse().unwrap(),
        pid,
        child: Some(child),
        extra_pids: vec![],
        dir: None,
        log: Some(log.clone()),
        note: String::new(),
        stopped: false,
    };
    srv.addr = srv.wait_listening(&rx, &log)?;
    srv.note = format!(
        "finnhub-sim (pid {pid}) on {} at {} trades/s per symbol, stderr in {}",
        srv.addr,
        a.market_rate,
        log.display()
    );
    Ok(srv)
}

/// The bench's arguments with redix pointed at the simulator (`market.url`, `market.token`,
/// `market.max_symbols` = the symbols used, at least redix's default of 50).
pub fn redix_args_for(a: &Args, sim: &Server) -> Args {
    let mut a2 = a.clone();
    let max = a.market_symbols.max(50);
    for kv in [
        format!("market.url=ws://{}", sim.addr),
        format!("market.token={}", a.market_token),
        format!("market.max_symbols={max}"),
    ] {
        a2.redix_args.push("--set".into());
        a2.redix_args.push(kv);
    }
    a2
}

/// A counter from redix's `/metrics/prom`, None when it cannot be read.
pub fn prom_counter(dep: &Deployment, name: &str) -> Option<f64> {
    let (status, body) = http_get(dep.primary().addr, "/metrics/prom").ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// CPU ticks of redix, the simulator and the generator, and box CPU, at one instant.
struct Snap {
    redix: u64,
    sim: u64,
    own: u64,
    busy: (u64, u64),
    at: Instant,
    upstream: Option<f64>,
    conflated: Option<f64>,
}

impl Snap {
    fn take(dep: &Deployment, sim: &Server) -> Res<Snap> {
        Ok(Snap {
            upstream: prom_counter(dep, "redix_market_trades_total"),
            conflated: prom_counter(dep, "redix_events_conflated_total"),
            redix: cpu_ticks(dep.primary().pid)?,
            sim: cpu_ticks(sim.pid)?,
            own: cpu_ticks(std::process::id() as i32)?,
            busy: box_cpu(),
            at: Instant::now(),
        })
    }
}

fn ticks_ms(a: u64, b: u64) -> f64 {
    b.saturating_sub(a) as f64 * 1000.0 / clk_tck()
}

/// Waits until trades reach the subscribers (redix subscribes upstream at the first client
/// of each symbol), at most 15 s.
fn wait_flowing(dep: &mut Deployment, sim: &mut Server, set: &ConnSet) -> Res<()> {
    let until = Instant::now() + Duration::from_secs(15);
    while set.sh.stale.load(Relaxed) == 0 {
        dep.check_alive()?;
        sim.check_alive()?;
        if Instant::now() > until || interrupted() {
            return Err(format!(
                "no trade reached a subscriber within 15 s of all being ready: {}",
                set.first_err().unwrap_or_default()
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
    // let every symbol's upstream subscription settle before the window opens
    thread::sleep(Duration::from_secs(1));
    Ok(())
}

/// The measured window: `--duration` s from opening (stale before) to the last sample.
fn measure(
    dep: &mut Deployment,
    sim: &mut Server,
    set: &ConnSet,
    a: &Args,
) -> Res<(Snap, Snap, u64)> {
    let sh = &set.sh;
    let s0 = Snap::take(dep, sim)?;
    sh.pub_start_ns.store(now_ns(), Relaxed);
    let ev0 = sh.events.load(Relaxed);
    let end = Instant::now() + Duration::from_secs_f64(a.duration);
    while Instant::now() < end {
        dep.check_alive()?;
        sim.check_alive()?;
        if interrupted() {
            return Err("interrupted".into());
        }
        thread::sleep(Duration::from_millis(50));
    }
    // the threads add their counts once per loop turn (≤ 50 ms)
    let ev1 = sh.events.load(Relaxed);
    let s1 = Snap::take(dep, sim)?;
    Ok((s0, s1, ev1 - ev0))
}

/// Subscribes, measures, and puts the figures together (the servers are already up).
fn run_on(
    dep: &mut Deployment,
    sim: &mut Server,
    a: &Args,
    tr: Transport,
    srcs: &mut SrcAlloc,
) -> Res<MarketResult> {
    let deadline = Instant::now() + Duration::from_secs_f64(a.deadline);
    let name = label(Kind::Redix, Mode::Embedded, tr, a);
    let syms = symbols(a.market_symbols.max(1));
    let channels: Vec<String> = syms.iter().map(|s| format!("trades:{s}")).collect();
    eprintln!(
        "[{name}] market: opening {} subscribers over {} symbols…",
        a.subs,
        syms.len()
    );
    let set = ConnSet::start_channels(dep.primary(), &channels, a, tr, a.subs, srcs)?;
    set.wait_ready(dep, deadline)?;
    let ready = set.sh.ready.load(Relaxed);
    if ready == 0 {
        return Err(format!(
            "no subscriber became ready: {}",
            set.first_err().unwrap_or_default()
        ));
    }
    wait_flowing(dep, sim, &set)?;
    let rss_before = rss_kib(dep.primary().pid)?;
    eprintln!(
        "[{name}] market: {ready} subscribers ready, trades flowing; measuring for {} s…",
        a.duration
    );
    let (s0, s1, delivered) = measure(dep, sim, &set, a)?;
    let rss_end = rss_kib(dep.primary().pid)?;
    let sim_rss = rss_kib(sim.pid)?;
    let sh = set.sh.clone();
    let first_err = set.first_err();
    let hist = set.finish().lat;
    let window_s = s1.at.duration_since(s0.at).as_secs_f64();
    let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    Ok(MarketResult {
        subs: a.subs,
        ready,
        symbols: syms.len(),
        rate: a.market_rate,
        window_s,
        delivered,
        stale: sh.stale.load(Relaxed),
        dropped: sh.dropped.load(Relaxed),
        slow_closed: sh.slow_closed.load(Relaxed),
        upstream: delta(s0.upstream, s1.upstream),
        conflated: delta(s0.conflated, s1.conflated),
        hist,
        cpu_ms: ticks_ms(s0.redix, s1.redix),
        rss_before,
        rss_end,
        sim_cpu_ms: ticks_ms(s0.sim, s1.sim),
        sim_rss,
        loadgen_cpu_pct: ticks_ms(s0.own, s1.own) / window_s / 10.0,
        box_busy_pct: box_busy_pct(s0.busy, s1.busy),
        first_err,
    })
}

/// One transport: the simulator, redix pointed at it, the scenario, both stopped. Returns
/// the result and a note on the processes (how they were started and ended).
pub fn run_market(a: &Args, tr: Transport, srcs: &mut SrcAlloc) -> (Res<MarketResult>, String) {
    let mut sim = match start_sim(a) {
        Ok(s) => s,
        Err(e) => return (Err(format!("start finnhub-sim: {e}")), String::new()),
    };
    let a2 = redix_args_for(a, &sim);
    let mut dep = match Deployment::start(Kind::Redix, Mode::Embedded, &a2, tr) {
        Ok(d) => d,
        Err(e) => {
            let ended = sim.stop();
            let note = format!("{}; {ended}", sim.note);
            return (Err(format!("start redix: {e}")), note);
        }
    };
    let b0 = box_cpu();
    thread::sleep(Duration::from_secs(1));
    let busy = box_busy_pct(b0, box_cpu());
    let r = run_on(&mut dep, &mut sim, a, tr, srcs);
    let (dep_note, dep_end, sim_end) = (dep.note(), dep.stop(), sim.stop());
    let note = format!(
        "{}; redix {dep_note}; box busy before load: {busy:.0} % of one core; redix: {dep_end}; finnhub-sim: {sim_end}",
        sim.note
    );
    (r, note)
}
