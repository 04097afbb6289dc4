//! The fanout scenario: S subscribers split over the deployment's nodes, the publisher on the
//! first node at E events/s for D seconds; latency, deliveries/s, loss, and server CPU per
//! delivery (Δ utime+stime / deliveries received), with a quiet baseline before publishing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::{Args, Transport};
use crate::deployment::{node_name, Deployment};
use crate::hist::Histogram;
use crate::now_ns;
use crate::output::label;
use crate::plan::SubRate;
use crate::publisher::{publisher, PubCfg};
use crate::support::proc::{box_busy_pct, box_cpu, clk_tck, cpu_ticks, rss_kib};
use crate::support::spawn::interrupted;
use crate::worker::{ConnSet, SrcAlloc};
use crate::Res;

pub struct FanoutResult {
    pub round: usize,
    pub subs: usize,
    pub ready: usize,
    pub rate: f64,
    pub duration: f64,
    pub planned: u64,
    pub sent: u64,
    pub published_ok: u64,
    pub publish_errors: u64,
    pub publish_rate: f64,
    pub pub_max_lag_us: u64,
    pub pub_max_in_flight: usize,
    pub pub_rtt_p50_us: u64,
    pub pub_rtt_p99_us: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub extra: u64,
    pub stale: u64,
    pub dropped: usize,
    /// of `dropped`, announced as slow consumers (SSE `event: slow`, WebSocket close 4008)
    pub slow_closed: usize,
    pub deliveries_per_s: f64,
    pub hist: Histogram,
    pub cpu_ms: f64,
    pub cpu_per_delivery_us: f64,
    pub quiet_cpu_ms_per_s: f64,
    pub window_s: f64,
    pub rss_before: u64,
    pub rss_end: u64,
    pub loadgen_cpu_pct: f64,
    /// whole box, in % of one core (200 % = both cores busy)
    pub box_busy_pct: f64,
    pub drain_s: f64,
    pub first_err: Option<String>,
    /// Redis mode: per node (empty for one server)
    pub nodes: Vec<NodeFig>,
    /// Redis mode: redis-server's CPU over the same window
    pub redis_cpu_ms: Option<f64>,
    /// Redis mode: redis-server's CPU in the quiet baseline, ms/s
    pub redis_quiet_ms_per_s: Option<f64>,
    pub redis_rss_end: Option<u64>,
}

/// One node's share of a fanout run (Redis mode).
pub struct NodeFig {
    pub name: String,
    pub addr: SocketAddr,
    pub subs: usize,
    pub ready: usize,
    pub expected: u64,
    pub hist: Histogram,
    pub cpu_ms: f64,
    pub rss_end: u64,
}

impl FanoutResult {
    /// CPU of the redix server(s) over the window, in % of one core
    pub fn server_pct(&self) -> f64 {
        self.cpu_ms / self.window_s / 10.0
    }
    pub fn redis_pct(&self) -> f64 {
        self.redis_cpu_ms.unwrap_or(0.0) / self.window_s / 10.0
    }
    /// Box CPU neither the servers (redix, redis-server) nor the generator used.
    pub fn other_pct(&self) -> f64 {
        (self.box_busy_pct - self.server_pct() - self.redis_pct() - self.loadgen_cpu_pct).max(0.0)
    }
}

/// utime + stime of each process, in clock ticks.
pub fn ticks_of(procs: &[(String, i32)]) -> Res<Vec<u64>> {
    procs.iter().map(|&(_, pid)| cpu_ticks(pid)).collect()
}

/// Subscribers split over the deployment's nodes, the publisher on the first node. In Redis
/// mode the redix nodes' CPU is "server CPU" (per node, and together per delivery), redis-server's
/// is reported beside it.
pub fn run_fanout(
    dep: &mut Deployment,
    a: &Args,
    tr: Transport,
    srcs: &mut SrcAlloc,
    sr: SubRate,
    round: usize,
) -> Res<FanoutResult> {
    let SubRate { subs, rate } = sr;
    let deadline = Instant::now() + Duration::from_secs_f64(a.deadline);
    let name = label(dep.kind, dep.mode, tr, a);
    let tck = clk_tck();
    // the redix nodes (or the one server) first, then redis-server
    let procs = dep.procs();
    let nn = dep.nodes.len();
    let node_ms = |t0: &[u64], t1: &[u64]| -> Vec<f64> {
        t0.iter()
            .zip(t1)
            .map(|(a, b)| (b - a) as f64 * 1000.0 / tck)
            .collect()
    };
    let split = if nn > 1 {
        format!(" over {nn} nodes")
    } else {
        String::new()
    };
    eprintln!("[{name}] fanout {subs}×{rate}/s: opening {subs} subscribers{split}…");
    let set = ConnSet::start(&dep.nodes, a, tr, subs, srcs)?;
    set.wait_ready(dep, deadline)?;
    let sh = set.sh.clone();
    let ready = sh.ready.load(Relaxed);
    if ready == 0 {
        return Err(format!(
            "no subscriber became ready: {}",
            set.first_err().unwrap_or_default()
        ));
    }
    thread::sleep(Duration::from_millis(500));
    // Quiet baseline: server CPU with the subscribers connected and nothing published (the
    // redix nodes together; redis-server apart).
    let q0 = (ticks_of(&procs)?, Instant::now());
    thread::sleep(Duration::from_secs(2));
    let quiet: Vec<f64> = node_ms(&q0.0, &ticks_of(&procs)?)
        .iter()
        .map(|m| m / q0.1.elapsed().as_secs_f64())
        .collect();
    let quiet_ms_per_s: f64 = quiet[..nn].iter().sum();
    let rss_before: u64 = dep.nodes.iter().map(|n| rss_kib(n.pid)).sum::<Res<u64>>()?;
    let self_pid = std::process::id() as i32;
    let cpu0 = ticks_of(&procs)?;
    let self0 = cpu_ticks(self_pid)?;
    let box0 = box_cpu();
    let w0 = Instant::now();
    let pub_start = now_ns();
    sh.pub_start_ns.store(pub_start, Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = PubCfg {
        kind: dep.kind,
        addr: dep.primary().addr,
        channel: a.channel.clone(),
        rate,
        duration: Duration::from_secs_f64(a.duration),
        payload_bytes: a.payload_bytes,
        max_conns: a.pub_conns,
        deadline,
        stop: stop.clone(),
    };
    eprintln!(
        "[{name}] fanout {subs}×{rate}/s: {ready} subscribers ready; publishing for {} s…",
        a.duration
    );
    let ph = thread::Builder::new()
        .name("publisher".into())
        .spawn(move || publisher(cfg))
        .map_err(|e| e.to_string())?;
    while !ph.is_finished() {
        if let Err(e) = dep.check_alive() {
            stop.store(true, Relaxed);
            let _ = ph.join();
            return Err(e);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let p = ph
        .join()
        .map_err(|_| "publisher thread panicked".to_string())?;
    let expected = p.ok * ready as u64;
    // drain: until every delivery arrived, or no progress for 3 s, or the drain timeout
    let d0 = Instant::now();
    let drain_until = (d0 + Duration::from_secs_f64(a.drain_timeout)).min(deadline);
    let (mut last, mut last_change) = (sh.events.load(Relaxed), Instant::now());
    loop {
        let ev = sh.events.load(Relaxed);
        if ev >= expected || Instant::now() > drain_until || interrupted() {
            break;
        }
        if ev != last {
            last = ev;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(3) {
            break;
        }
        dep.check_alive()?;
        thread::sleep(Duration::from_millis(5));
    }
    let drain_s = d0.elapsed().as_secs_f64();
    let cpu1 = ticks_of(&procs)?;
    let self1 = cpu_ticks(self_pid)?;
    let box1 = box_cpu();
    let wall = w0.elapsed().as_secs_f64();
    let rss_end_each = dep
        .nodes
        .iter()
        .map(|n| rss_kib(n.pid))
        .collect::<Res<Vec<u64>>>()?;
    let redis_rss_end = dep.redis.as_ref().map(|r| rss_kib(r.pid)).transpose()?;
    dep.check_alive()?;
    let first_err = set.first_err().or(p.first_err.clone());
    let dropped = sh.dropped.load(Relaxed);
    let slow_closed = sh.slow_closed.load(Relaxed);
    let stale = sh.stale.load(Relaxed);
    let last_recv = sh.last_recv_ns.load(Relaxed);
    let node_ready: Vec<usize> = sh.node_ready.iter().map(|r| r.load(Relaxed)).collect();
    let per_node = set.per_node.clone();
    let hists = set.finish();
    let hist = hists.lat;
    let received = hist.n;
    let ms_each = node_ms(&cpu0, &cpu1);
    let cpu_ms: f64 = ms_each[..nn].iter().sum();
    let span = (last_recv.saturating_sub(pub_start)) as f64 / 1e9;
    let nodes = if nn > 1 {
        hists
            .node_lat
            .into_iter()
            .enumerate()
            .map(|(i, h)| NodeFig {
                name: node_name(i),
                addr: dep.nodes[i].addr,
                subs: per_node[i],
                ready: node_ready[i],
                expected: p.ok * node_ready[i] as u64,
                hist: h,
                cpu_ms: ms_each[i],
                rss_end: rss_end_each[i],
            })
            .collect()
    } else {
        vec![]
    };
    Ok(FanoutResult {
        round,
        subs,
        ready,
        rate,
        duration: a.duration,
        planned: p.planned,
        sent: p.sent,
        published_ok: p.ok,
        publish_errors: p.errors,
        publish_rate: p.sent as f64 / p.elapsed.as_secs_f64().max(1e-9),
        pub_max_lag_us: p.max_lag.as_micros() as u64,
        pub_max_in_flight: p.max_in_flight,
        pub_rtt_p50_us: p.rtt.percentile(50.0),
        pub_rtt_p99_us: p.rtt.percentile(99.0),
        expected,
        received,
        lost: expected.saturating_sub(received),
        extra: received.saturating_sub(expected),
        stale,
        dropped,
        slow_closed,
        deliveries_per_s: if span > 0.0 {
            received as f64 / span
        } else {
            0.0
        },
        cpu_ms,
        cpu_per_delivery_us: per_delivery_us(cpu_ms, received),
        quiet_cpu_ms_per_s: quiet_ms_per_s,
        window_s: wall,
        rss_before,
        rss_end: rss_end_each.iter().sum(),
        loadgen_cpu_pct: (self1 - self0) as f64 / tck / wall * 100.0,
        box_busy_pct: box_busy_pct(box0, box1),
        drain_s,
        hist,
        first_err,
        nodes,
        redis_cpu_ms: dep.redis.as_ref().map(|_| ms_each[nn]),
        redis_quiet_ms_per_s: quiet.get(nn).copied(),
        redis_rss_end,
    })
}

/// CPU milliseconds per delivery, in µs.
pub fn per_delivery_us(cpu_ms: f64, deliveries: u64) -> f64 {
    if deliveries > 0 {
        cpu_ms * 1000.0 / deliveries as f64
    } else {
        0.0
    }
}
