//! The output: the run's settings and the box's load average, a block per mode, the
//! comparison (ratio cluster / single), one JSON line per mode; and what a run must show to
//! pass (every publish answered 2xx, every stream matching).

use serde_json::json;

use crate::cli::Args;
use crate::run::ModeResult;
use crate::support::report::{ms, round, thousands};

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

pub fn preamble(a: &Args) {
    println!(
        "publish bench: {} nodes × {} reactor(s), {} publisher connections per node × depth {}, \
         {} channels, ~{} B data, history.max_events {}, {} s warm-up + {} s measured; \
         cluster: 3 masters × {} replica(s); redix {}",
        a.nodes,
        a.workers,
        a.conns,
        a.depth,
        a.channels,
        a.payload,
        a.history,
        a.warmup,
        a.duration,
        a.replicas,
        a.redix_bin.display()
    );
    println!("load average before: {}", loadavg());
}

pub fn passed(r: &ModeResult) -> bool {
    r.non_2xx.is_empty()
        && r.errors == 0
        && r.unanswered == 0
        && r.check.matching == r.check.channels
        && r.acked > 0
}

/// The box's busy share not taken by the run's own processes (other work on the box).
fn everything_else(r: &ModeResult) -> f64 {
    let ours = r.nodes.iter().map(|n| n.total).sum::<f64>()
        + r.redis.iter().map(|s| s.pct).sum::<f64>()
        + r.gen_pct;
    (r.box_pct - ours).max(0.0)
}

/// What most likely limited the mode, from the CPU figures.
fn limit(r: &ModeResult) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let full = r.box_pct >= cores * 100.0 * 0.9;
    let hot = r.redis.iter().filter(|s| s.master).find(|s| s.pct >= 85.0);
    if let Some(s) = hot {
        return format!("redis-server :{} at {:.0} % of its one core", s.port, s.pct);
    }
    let command = r.nodes.iter().map(|n| n.command).fold(0.0, f64::max);
    let per_node = r.rate() / r.nodes.len().max(1) as f64;
    let trips = match r.mode {
        crate::cli::Mode::Cluster => format!(
            "each node's command thread writes a batch as one pipeline per master it touches \
             (a publish every {:.0} µs per node), busy at most {command:.0} % of a core",
            1e6 / per_node.max(1.0)
        ),
        crate::cli::Mode::Single => String::new(),
    };
    if full {
        let sep = if trips.is_empty() { "" } else { "; " };
        return format!(
            "the box's {cores} cores ({:.0} % busy; everything else {:.0} %): nodes {:.0} %, redis {:.0} %, bench {:.0} %{sep}{trips}",
            r.box_pct,
            everything_else(r),
            r.nodes.iter().map(|n| n.total).sum::<f64>(),
            r.redis.iter().map(|s| s.pct).sum::<f64>(),
            r.gen_pct
        );
    }
    if !trips.is_empty() && command < 50.0 {
        return format!("round trips: {trips}");
    }
    let reactor = r.nodes.iter().map(|n| n.reactor).fold(0.0, f64::max);
    if reactor >= 85.0 {
        return format!("a node's reactor at {reactor:.0} % of a core");
    }
    "no core full: the publishers in flight (--conns, --depth) over the latency".into()
}

pub fn print_mode(a: &Args, r: &ModeResult) {
    println!();
    println!(
        "== {} ({} nodes) — load average after: {}",
        r.mode.tag(),
        a.nodes,
        loadavg()
    );
    println!(
        "  publishes/s (acknowledged, {:.1} s window)  {}",
        r.secs,
        thousands(r.rate())
    );
    println!(
        "  latency p50 / p99 / p99.9 / max            {} / {} / {} / {} ms",
        ms(r.lat[0] as u64),
        ms(r.lat[1] as u64),
        ms(r.lat[2] as u64),
        ms(r.lat[3] as u64)
    );
    println!(
        "  whole run: sent {}, 2xx {}, non-2xx {:?}, unanswered {}, connection errors {}",
        r.sent, r.acked, r.non_2xx, r.unanswered, r.errors
    );
    if let Some(e) = &r.first_error {
        println!("  first error: {e}");
    }
    print_processes(a, r);
    println!(
        "  bench (publishers) {:.1} % of a core; box busy {:.0} %, of which everything else {:.0} %",
        r.gen_pct,
        r.box_pct,
        everything_else(r)
    );
    println!(
        "  check: {} of {} channels' newest stream entry = last acknowledged publish{}",
        r.check.matching,
        r.check.channels,
        if passed(r) { "" } else { " — FAILED" }
    );
    for m in &r.check.mismatches {
        println!("    {m}");
    }
    print_reading(a, r);
}

/// Each node's and each redis-server's CPU.
fn print_processes(a: &Args, r: &ModeResult) {
    for n in &r.nodes {
        println!(
            "  node {:<21} {:>5.1} % of a core (reactor {:.1}, Redis command thread {:.1}), {:.1} µs per publish it took",
            n.addr,
            n.total,
            n.reactor,
            n.command,
            n.total * 10_000.0 * a.nodes as f64 / r.rate().max(1.0)
        );
    }
    for s in &r.redis {
        let role = if s.master { "master" } else { "replica" };
        let mut per = match s.acked {
            0 => String::new(),
            n => format!(", {:.1} µs per publish of its slots", per_pub(r, s.pct, n)),
        };
        if let Some((calls, us)) = s.script {
            let publish = s
                .publish_us
                .map_or(String::new(), |p| format!(", PUBLISH {p:.1}"));
            per.push_str(&format!(
                " (script: {calls} calls, {us:.1} µs each{publish})"
            ));
        }
        if let Some((sent, received)) = s.bus {
            per.push_str(&format!("; bus PUBLISH sent {sent}, received {received}"));
        }
        println!(
            "  redis-server :{:<5} {role:<7} {:>5.1} % of a core; {} channels, {} publishes{per}",
            s.port, s.pct, s.channels, s.acked
        );
    }
}

/// Scheduling per publish, the rate per node, and what limited the mode.
fn print_reading(a: &Args, r: &ModeResult) {
    let [n, rs, b] = r.sched.map(|(slices, wait)| {
        let per = r.rate().max(1.0) * r.secs;
        format!("{:.2} / {:.1} µs", slices as f64 / per, wait / per)
    });
    println!(
        "  per publish: times put on a CPU / µs runnable but waiting for one — nodes {n}, redis {rs}, bench {b}"
    );
    let per_node = r.rate() / r.nodes.len().max(1) as f64;
    println!(
        "  per node {} publishes/s = one every {:.0} µs; publishes in flight {} (Little: {:.2} ms each)",
        thousands(per_node),
        1e6 / per_node.max(1.0),
        a.nodes * a.conns * a.depth,
        (a.nodes * a.conns * a.depth) as f64 / r.rate().max(1.0) * 1e3
    );
    println!("  limited by (a guess from the CPU figures): {}", limit(r));
}

/// µs of CPU per publish for a server at `pct` % that carried `acked` of the run's publishes
/// (its share of the window's rate).
fn per_pub(r: &ModeResult, pct: f64, acked: u64) -> f64 {
    let share = acked as f64 / r.acked.max(1) as f64;
    pct * 10_000.0 / (r.rate() * share).max(1.0)
}

pub fn compare(results: &[ModeResult]) {
    let single = results.iter().find(|r| r.mode == crate::cli::Mode::Single);
    let cluster = results.iter().find(|r| r.mode == crate::cli::Mode::Cluster);
    let (Some(s), Some(c)) = (single, cluster) else {
        return;
    };
    let row = |name: &str, f: &dyn Fn(&ModeResult) -> String| {
        println!("| {name} | {} | {} |", f(s), f(c));
    };
    let redis = |r: &ModeResult| r.redis.iter().map(|s| s.pct).sum::<f64>();
    let nodes = |r: &ModeResult| r.nodes.iter().map(|n| n.total).sum::<f64>();
    let all = |r: &ModeResult| redis(r) + nodes(r) + r.gen_pct;
    // % of a core → "%, µs of CPU per publish"
    let cpu = |pct: f64, r: &ModeResult| format!("{pct:.0}, {:.1}", pct * 1e4 / r.rate().max(1.0));
    println!();
    println!("| figure | one redis-server | 3-master cluster |");
    println!("|---|---|---|");
    row("publishes/s (acknowledged)", &|r| match r.mode {
        crate::cli::Mode::Single => thousands(r.rate()),
        crate::cli::Mode::Cluster => format!(
            "{} (**{:.2}×**)",
            thousands(r.rate()),
            r.rate() / s.rate().max(1.0)
        ),
    });
    row("latency p50 / p99 ms", &|r| {
        format!("{} / {}", ms(r.lat[0] as u64), ms(r.lat[1] as u64))
    });
    row(
        "redis-server CPU, all servers: % of a core, µs per publish",
        &|r| cpu(redis(r), r),
    );
    row(
        "redix nodes CPU, together: % of a core, µs per publish",
        &|r| cpu(nodes(r), r),
    );
    row(
        "the run's processes together (redis, nodes, bench): % of a core, µs per publish",
        &|r| cpu(all(r), r),
    );
    row(
        "per publish, all the run's threads: times put on a CPU, time waiting for one",
        &|r| {
            let per = r.rate().max(1.0) * r.secs;
            let n: u64 = r.sched.iter().map(|x| x.0).sum();
            let w: f64 = r.sched.iter().map(|x| x.1).sum();
            format!("{:.1}, {:.0} µs", n as f64 / per, w / per)
        },
    );
    row("bench / box busy / everything else (% of a core)", &|r| {
        format!(
            "{:.0} / {:.0} / {:.0}",
            r.gen_pct,
            r.box_pct,
            everything_else(r)
        )
    });
}

pub fn json(a: &Args, r: &ModeResult) -> serde_json::Value {
    json!({
        "bench": "publish", "mode": r.mode.tag(), "nodes": a.nodes, "conns_per_node": a.conns,
        "depth": a.depth, "channels": a.channels, "secs": round(r.secs, 2),
        "publishes_per_s": round(r.rate(), 1), "sent": r.sent, "acked": r.acked,
        "non_2xx": r.non_2xx.values().sum::<u64>(), "unanswered": r.unanswered,
        "errors": r.errors, "p50_us": r.lat[0], "p99_us": r.lat[1], "p999_us": r.lat[2],
        "max_us": r.lat[3],
        "redis_cpu_pct": r.redis.iter().map(|s| round(s.pct, 1)).collect::<Vec<_>>(),
        "node_cpu_pct": r.nodes.iter().map(|n| round(n.total, 1)).collect::<Vec<_>>(),
        "bench_cpu_pct": round(r.gen_pct, 1), "box_busy_pct": round(r.box_pct, 1),
        "everything_else_pct": round(everything_else(r), 1),
        "sched_slices": r.sched.map(|x| x.0), "sched_wait_us": r.sched.map(|x| round(x.1, 0)),
        "script_us_per_call": r.redis.iter().filter_map(|s| s.script.map(|x| round(x.1, 2))).collect::<Vec<_>>(),
        "channels_checked": r.check.channels, "channels_matching": r.check.matching,
        "passed": passed(r),
    })
}
