//! The fanout scenario: S subscribers split over the deployment's nodes, the publisher on the
//! first node at E events/s for D seconds; latency, deliveries/s, loss, and server CPU per
//! delivery (Δ utime+stime / deliveries received), with a quiet baseline before publishing.
//! With `--attacker` the pipelining attacker (`attack`) runs, on its own threads, for the
//! publishing window against the first node; in the parked pass of `--scenario jobs` the parked
//! summarize requests (`jobs_park`) run, on their own thread, from before the quiet baseline to
//! the end of the drain.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::attack::Attack;
use crate::attack_figs::AttackFigs;
use crate::cli::{Args, Pass, Transport};
use crate::deployment::{node_name, Deployment};
use crate::hist::Histogram;
use crate::jobs_park::Parkers;
use crate::jobs_park_figs::ParkFigs;
use crate::market::prom_counter;
use crate::now_ns;
use crate::output::label;
use crate::plan::SubRate;
use crate::publisher::{publisher, PubCfg, PubOut};
use crate::support::proc::{box_busy_pct, box_cpu, clk_tck, cpu_ticks, rss_kib};
use crate::support::spawn::interrupted;
use crate::worker::{ConnSet, Shared, SrcAlloc};
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
    /// `--attacker`: the attack's (or the sampled pass's) figures
    pub attack: Option<AttackFigs>,
    /// `--scenario jobs`, the pass with parked requests: theirs
    pub parked: Option<ParkFigs>,
    /// `--floor`: the machine's write floor measured right after this run
    pub floor: Option<crate::floor::Floor>,
    /// redix: events per `writev` over the run (first node), from its counters
    pub events_per_write: Option<f64>,
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

/// CPU of the measured processes, of the generator and of the whole box at one instant.
struct Sample {
    /// utime + stime of each process, in clock ticks
    ticks: Vec<u64>,
    own: u64,
    busy: (u64, u64),
    at: Instant,
}

impl Sample {
    fn take(procs: &[(String, i32)]) -> Res<Sample> {
        Ok(Sample {
            ticks: procs
                .iter()
                .map(|&(_, pid)| cpu_ticks(pid))
                .collect::<Res<_>>()?,
            own: cpu_ticks(std::process::id() as i32)?,
            busy: box_cpu(),
            at: Instant::now(),
        })
    }

    /// CPU ms each process used since `earlier`.
    fn ms_since(&self, earlier: &Sample) -> Vec<f64> {
        let tck = clk_tck();
        earlier
            .ticks
            .iter()
            .zip(&self.ticks)
            .map(|(a, b)| (b - a) as f64 * 1000.0 / tck)
            .collect()
    }
}

/// Opens `subs` subscribers over the deployment's nodes and waits until they are ready.
fn subscribe(
    dep: &mut Deployment,
    a: &Args,
    tr: Transport,
    srcs: &mut SrcAlloc,
    sr: SubRate,
    deadline: Instant,
) -> Res<ConnSet> {
    let SubRate { subs, rate } = sr;
    let name = label(dep.kind, dep.mode, tr, a);
    let nn = dep.nodes.len();
    let split = if nn > 1 {
        format!(" over {nn} nodes")
    } else {
        String::new()
    };
    eprintln!("[{name}] fanout {subs}×{rate}/s: opening {subs} subscribers{split}…");
    let set = ConnSet::start(&dep.nodes, a, tr, subs, srcs)?;
    set.wait_ready(dep, deadline)?;
    if set.sh.ready.load(Relaxed) == 0 {
        return Err(format!(
            "no subscriber became ready: {}",
            set.first_err().unwrap_or_default()
        ));
    }
    Ok(set)
}

/// Server CPU with the subscribers connected and nothing published, ms/s per process.
fn quiet_baseline(procs: &[(String, i32)]) -> Res<Vec<f64>> {
    let q0 = Sample::take(procs)?;
    thread::sleep(Duration::from_secs(2));
    let q1 = Sample::take(procs)?;
    let secs = q0.at.elapsed().as_secs_f64();
    Ok(q1.ms_since(&q0).iter().map(|m| m / secs).collect())
}

/// Runs the publisher thread to its end, stopping it if a server dies.
fn publish(dep: &mut Deployment, a: &Args, rate: f64, deadline: Instant) -> Res<PubOut> {
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
    ph.join()
        .map_err(|_| "publisher thread panicked".to_string())
}

/// Waits until every delivery arrived, or no progress for 3 s, or the drain timeout;
/// returns the seconds waited.
fn drain(dep: &mut Deployment, sh: &Shared, expected: u64, until: Instant) -> Res<f64> {
    let d0 = Instant::now();
    let (mut last, mut last_change) = (sh.events.load(Relaxed), Instant::now());
    loop {
        let ev = sh.events.load(Relaxed);
        if ev >= expected || Instant::now() > until || interrupted() {
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
    Ok(d0.elapsed().as_secs_f64())
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
    pass: Pass,
) -> Res<FanoutResult> {
    let deadline = Instant::now() + Duration::from_secs_f64(a.deadline);
    let name = label(dep.kind, dep.mode, tr, a);
    // the redix nodes (or the one server) first, then redis-server
    let procs = dep.procs();
    let set = subscribe(dep, a, tr, srcs, sr, deadline)?;
    let sh = set.sh.clone();
    let ready = sh.ready.load(Relaxed);
    let (addr, pid) = (dep.primary().addr, dep.primary().pid);
    let parkers = Parkers::start_for(pass, addr, a, srcs, deadline)?;
    thread::sleep(Duration::from_millis(500));
    let quiet = quiet_baseline(&procs)?;
    let rss_before: u64 = dep.nodes.iter().map(|n| rss_kib(n.pid)).sum::<Res<u64>>()?;
    let w0 = Writes::read(dep);
    let s0 = Sample::take(&procs)?;
    let pub_start = now_ns();
    sh.pub_start_ns.store(pub_start, Relaxed);
    eprintln!(
        "[{name}] fanout {}×{}/s: {ready} subscribers ready; publishing for {} s…",
        sr.subs, sr.rate, a.duration
    );
    let window = Duration::from_secs_f64(a.duration);
    let attack = Attack::start(pass, addr, pid, a, window)?;
    if let Some(p) = &parkers {
        p.mark();
    }
    let p = publish(dep, a, sr.rate, deadline)?;
    let mut attack = attack.map(Attack::finish);
    let expected = p.ok * ready as u64;
    let drain_until = (Instant::now() + Duration::from_secs_f64(a.drain_timeout)).min(deadline);
    let drain_s = drain(dep, &sh, expected, drain_until)?;
    let s1 = Sample::take(&procs)?;
    let events_per_write = Writes::read(dep)
        .zip(w0)
        .map(|(w1, w0)| w1.per_write_since(&w0));
    let parked = parkers.map(Parkers::finish);
    let (rss_end_each, redis_rss_end) = rss_at_end(dep)?;
    if let Some(f) = attack.as_mut() {
        f.rss_after_kib = rss_end_each[0];
    }
    dep.check_alive()?;
    let run = Run {
        events_per_write,
        sr,
        round,
        ready,
        pub_start,
        quiet,
        rss_before,
        rss_end_each,
        redis_rss_end,
        drain_s,
        attack,
        parked,
    };
    Ok(run.result(dep, a, set, &p, &s0, &s1))
}

/// VmRSS of each node and of redis-server (Redis mode), KiB.
fn rss_at_end(dep: &Deployment) -> Res<(Vec<u64>, Option<u64>)> {
    let each = dep
        .nodes
        .iter()
        .map(|n| rss_kib(n.pid))
        .collect::<Res<Vec<u64>>>()?;
    let redis = dep.redis.as_ref().map(|r| rss_kib(r.pid)).transpose()?;
    Ok((each, redis))
}

/// redix's write counters (`/metrics/prom` of the first node); None for nchan.
struct Writes {
    events: f64,
    calls: f64,
}

impl Writes {
    fn read(dep: &Deployment) -> Option<Writes> {
        Some(Writes {
            events: prom_counter(dep, "redix_events_written_total")?,
            calls: prom_counter(dep, "redix_write_calls_total")?,
        })
    }

    /// Events per `writev` since `before`.
    fn per_write_since(&self, before: &Writes) -> f64 {
        (self.events - before.events) / (self.calls - before.calls).max(1.0)
    }
}

/// What `run_fanout` measured before the counters are read.
struct Run {
    events_per_write: Option<f64>,
    sr: SubRate,
    round: usize,
    ready: usize,
    pub_start: u64,
    /// quiet baseline per process, ms/s
    quiet: Vec<f64>,
    rss_before: u64,
    rss_end_each: Vec<u64>,
    redis_rss_end: Option<u64>,
    drain_s: f64,
    attack: Option<AttackFigs>,
    parked: Option<ParkFigs>,
}

impl Run {
    /// Stops the subscribers and puts the figures together.
    fn result(
        self,
        dep: &Deployment,
        a: &Args,
        set: ConnSet,
        p: &PubOut,
        s0: &Sample,
        s1: &Sample,
    ) -> FanoutResult {
        let nn = dep.nodes.len();
        let sh = set.sh.clone();
        let first_err = set.first_err().or(p.first_err.clone());
        let (dropped, slow_closed) = (sh.dropped.load(Relaxed), sh.slow_closed.load(Relaxed));
        let stale = sh.stale.load(Relaxed);
        let last_recv = sh.last_recv_ns.load(Relaxed);
        let node_ready: Vec<usize> = sh.node_ready.iter().map(|r| r.load(Relaxed)).collect();
        let per_node = set.per_node.clone();
        let hists = set.finish();
        let received = hists.lat.n;
        let expected = p.ok * self.ready as u64;
        let ms_each = s1.ms_since(s0);
        let cpu_ms: f64 = ms_each[..nn].iter().sum();
        let wall = s1.at.duration_since(s0.at).as_secs_f64();
        let span = (last_recv.saturating_sub(self.pub_start)) as f64 / 1e9;
        let nodes = if nn > 1 {
            self.node_figs(dep, p, hists.node_lat, &per_node, &node_ready, &ms_each)
        } else {
            vec![]
        };
        FanoutResult {
            round: self.round,
            subs: self.sr.subs,
            ready: self.ready,
            rate: self.sr.rate,
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
            quiet_cpu_ms_per_s: self.quiet[..nn].iter().sum(),
            window_s: wall,
            rss_before: self.rss_before,
            rss_end: self.rss_end_each.iter().sum(),
            loadgen_cpu_pct: (s1.own - s0.own) as f64 / clk_tck() / wall * 100.0,
            box_busy_pct: box_busy_pct(s0.busy, s1.busy),
            drain_s: self.drain_s,
            hist: hists.lat,
            first_err,
            nodes,
            redis_cpu_ms: dep.redis.as_ref().map(|_| ms_each[nn]),
            redis_quiet_ms_per_s: self.quiet.get(nn).copied(),
            redis_rss_end: self.redis_rss_end,
            attack: self.attack,
            parked: self.parked,
            floor: None,
            events_per_write: self.events_per_write,
        }
    }

    /// Each node's share (Redis mode).
    fn node_figs(
        &self,
        dep: &Deployment,
        p: &PubOut,
        lat: Vec<Histogram>,
        per_node: &[usize],
        node_ready: &[usize],
        ms_each: &[f64],
    ) -> Vec<NodeFig> {
        lat.into_iter()
            .enumerate()
            .map(|(i, h)| NodeFig {
                name: node_name(i),
                addr: dep.nodes[i].addr,
                subs: per_node[i],
                ready: node_ready[i],
                expected: p.ok * node_ready[i] as u64,
                hist: h,
                cpu_ms: ms_each[i],
                rss_end: self.rss_end_each[i],
            })
            .collect()
    }
}

/// CPU milliseconds per delivery, in µs.
pub fn per_delivery_us(cpu_ms: f64, deliveries: u64) -> f64 {
    if deliveries > 0 {
        cpu_ms * 1000.0 / deliveries as f64
    } else {
        0.0
    }
}
