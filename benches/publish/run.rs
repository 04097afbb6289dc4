//! One mode of a run: start its Redis and its redix nodes, publish for `--warmup` +
//! `--duration` seconds, sample CPU and the acknowledged count at the edges of the measured
//! window, stop the publishers (every request still in flight is answered first), check the
//! streams in Redis, stop everything.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::check::{self, Checked};
use crate::cli::{Args, Mode, Res};
use crate::cpu;
use crate::load::{self, ConnOut, Flags, Spec};
use crate::nodes::{NodeOpts, Nodes};
use crate::redis::Redis;
use crate::support::proc::{alive, box_busy_pct, box_cpu, self_cpu_secs};
use crate::support::spawn::{check_interrupted, interrupted};

pub struct NodeCpu {
    pub addr: String,
    pub total: f64,
    pub reactor: f64,
    pub command: f64,
}

/// One redis-server: % of a core, and the channels and acknowledged publishes of its slots.
pub struct ShardCpu {
    pub port: u16,
    pub master: bool,
    pub pct: f64,
    pub channels: usize,
    pub acked: u64,
    /// the publish script in the window (`INFO commandstats`): calls, µs per call
    pub script: Option<(u64, f64)>,
    /// the script's PUBLISH (broadcast over the cluster bus in a cluster): µs per call
    pub publish_us: Option<f64>,
    /// cluster bus PUBLISH messages sent and received over the whole run
    pub bus: Option<(u64, u64)>,
}

pub struct ModeResult {
    pub mode: Mode,
    pub secs: f64,
    /// acknowledged within the window
    pub acked_window: u64,
    pub sent: u64,
    pub acked: u64,
    pub unanswered: u64,
    pub errors: u64,
    pub non_2xx: BTreeMap<u16, u64>,
    pub first_error: Option<String>,
    /// p50, p99, p99.9, max in µs
    pub lat: [u32; 4],
    pub nodes: Vec<NodeCpu>,
    pub redis: Vec<ShardCpu>,
    pub gen_pct: f64,
    pub box_pct: f64,
    /// nodes, redis-servers, bench: (times put on a CPU, µs waiting for one) in the window
    pub sched: [(u64, f64); 3],
    pub check: Checked,
}

impl ModeResult {
    pub fn rate(&self) -> f64 {
        self.acked_window as f64 / self.secs
    }
}

/// Runs one mode from start to stop.
pub fn run_mode(a: &Args, mode: Mode) -> Res<ModeResult> {
    check_interrupted()?;
    eprintln!("[{}] starting Redis", mode.tag());
    let redis = match mode {
        Mode::Single => Redis::single()?,
        Mode::Cluster => Redis::cluster(a.replicas)?,
    };
    eprintln!("[{}] starting {} redix nodes", mode.tag(), a.nodes);
    let mut sets = vec![
        format!("history.max_events={}", a.history),
        format!("redis.prefix=\"{}\"", a.prefix),
    ];
    sets.extend(a.sets.iter().cloned());
    let nodes = Nodes::start(&NodeOpts {
        bin: &a.redix_bin,
        count: a.nodes,
        workers: a.workers,
        redis_args: redis.node_args(),
        sets: &sets,
        tag: mode.tag(),
    })?;
    let channels: Vec<String> = (0..a.channels).map(|i| format!("pb-{i}")).collect();
    let conns = a.nodes * a.conns;
    let specs = (0..conns)
        .map(|k| Spec {
            addr: nodes.0[k % a.nodes].addr,
            channels: channels.iter().skip(k).step_by(conns).cloned().collect(),
            depth: a.depth,
            pad: "x".repeat(a.payload.saturating_sub(16)),
        })
        .collect();
    let flags = Arc::new(Flags::default());
    let handles = load::start(specs, &flags)?;
    eprintln!(
        "[{}] {conns} connections × depth {}: {} s warm-up, {} s measured",
        mode.tag(),
        a.depth,
        a.warmup,
        a.duration
    );
    let window = measure(a, &redis, &nodes, &flags);
    flags.stop.store(true, Relaxed);
    let outs: Vec<ConnOut> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
    let w = window?;
    let dead = nodes.pids().into_iter().filter(|&p| !alive(p)).count();
    if dead > 0 {
        return Err(format!("{dead} redix node(s) died during the run"));
    }
    eprintln!("[{}] checking the streams in Redis", mode.tag());
    result(a, mode, &redis, &nodes, w, outs)
}

/// The window's figures before the per-connection results are merged.
struct Window {
    secs: f64,
    acked: u64,
    cpu0: cpu::Sample,
    cpu1: cpu::Sample,
    gen_pct: f64,
    box_pct: f64,
}

fn sleep_for(secs: f64) -> Res<()> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    Ok(())
}

fn measure(a: &Args, redis: &Redis, nodes: &Nodes, flags: &Flags) -> Res<Window> {
    let node_pids = nodes.pids();
    let mut pids = node_pids.clone();
    pids.extend(redis.servers.iter().map(|s| s.child.id() as i32));
    pids.push(std::process::id() as i32);
    sleep_for(a.warmup)?;
    let (c0, b0, g0, t0) = (
        cpu::sample(&pids, &node_pids),
        box_cpu(),
        self_cpu_secs(),
        Instant::now(),
    );
    let a0 = flags.acked.load(Relaxed);
    redis.reset_stats();
    flags.measuring.store(true, Relaxed);
    let slept = sleep_for(a.duration);
    flags.measuring.store(false, Relaxed);
    let a1 = flags.acked.load(Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let (c1, b1, g1) = (cpu::sample(&pids, &node_pids), box_cpu(), self_cpu_secs());
    slept?;
    if interrupted() {
        return Err("interrupted".into());
    }
    Ok(Window {
        secs,
        acked: a1 - a0,
        cpu0: c0,
        cpu1: c1,
        gen_pct: (g1 - g0) / secs * 100.0,
        box_pct: box_busy_pct(b0, b1),
    })
}

fn result(
    a: &Args,
    mode: Mode,
    redis: &Redis,
    nodes: &Nodes,
    w: Window,
    outs: Vec<ConnOut>,
) -> Res<ModeResult> {
    let mut lat: Vec<u32> = outs.iter().flat_map(|o| o.lat_us.iter().copied()).collect();
    lat.sort_unstable();
    let tallies: Vec<_> = outs.iter().flat_map(|o| o.channels.clone()).collect();
    let mut non_2xx = BTreeMap::new();
    for (s, n) in outs.iter().flat_map(|o| o.non_2xx.iter()) {
        *non_2xx.entry(*s).or_default() += n;
    }
    let check = check::streams(redis, &a.prefix, &tallies, a.history);
    let redis_pids: Vec<i32> = redis.servers.iter().map(|s| s.child.id() as i32).collect();
    let sched = [nodes.pids(), redis_pids, vec![std::process::id() as i32]]
        .map(|p| cpu::sched_delta(&w.cpu0, &w.cpu1, &p));
    let node_cpu = nodes
        .0
        .iter()
        .map(|n| {
            let p = n.child.id() as i32;
            NodeCpu {
                addr: n.addr.to_string(),
                total: cpu::pct(&w.cpu0, &w.cpu1, p, w.secs),
                reactor: cpu::group_pct(&w.cpu0, &w.cpu1, p, "reactor", w.secs),
                command: cpu::group_pct(&w.cpu0, &w.cpu1, p, "command", w.secs),
            }
        })
        .collect();
    Ok(ModeResult {
        mode,
        secs: w.secs,
        acked_window: w.acked,
        sent: tallies.iter().map(|t| t.sent).sum(),
        acked: tallies.iter().map(|t| t.acked).sum(),
        unanswered: tallies.iter().map(|t| t.unanswered).sum(),
        errors: outs.iter().map(|o| o.errors).sum(),
        non_2xx,
        first_error: outs.iter().find_map(|o| o.first_error.clone()),
        lat: [50.0, 99.0, 99.9, 100.0].map(|p| load::percentile(&lat, p)),
        nodes: node_cpu,
        redis: shards(a, redis, &w, &tallies)?,
        gen_pct: w.gen_pct,
        box_pct: w.box_pct,
        sched,
        check,
    })
}

/// Every redis-server's CPU, and for a master the channels (and publishes) of its slots.
fn shards(
    a: &Args,
    redis: &Redis,
    w: &Window,
    tallies: &[load::ChannelTally],
) -> Res<Vec<ShardCpu>> {
    let mut out: Vec<ShardCpu> = redis
        .servers
        .iter()
        .map(|s| ShardCpu {
            port: s.port,
            master: s.master,
            pct: cpu::pct(&w.cpu0, &w.cpu1, s.child.id() as i32, w.secs),
            channels: 0,
            acked: 0,
            script: redis.cmd_stats(s.port, "evalsha").filter(|_| s.master),
            publish_us: redis.cmd_stats(s.port, "publish").map(|p| p.1),
            bus: redis.bus_publishes(s.port).filter(|_| redis.cluster),
        })
        .collect();
    for t in tallies {
        let key = check::stream_key(&a.prefix, &t.name, redis.cluster);
        let owner = redis.owner_of(&key)?;
        if let Some(s) = out.iter_mut().find(|s| s.port == owner) {
            s.channels += 1;
            s.acked += t.acked;
        }
    }
    Ok(out)
}
