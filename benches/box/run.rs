//! One run: servers up, clients connected (idle figures), then the fan-out passes, each
//! twice with `--stall-pct`. Prints text blocks and one JSON line per phase.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::fleet::{sum, Fleet, Spec};
use crate::hist::Hist;
use crate::nodes::{get, NodeOpts, Nodes};
use crate::publish::Publisher;
use crate::support::proc::cpu_ticks;
use crate::support::spawn::{check_interrupted, interrupted};
use crate::sys::{kernel, loadavg};
use crate::Args;

type Res<T> = Result<T, String>;

pub fn run(a: &Args) -> Res<()> {
    let redis = a.redis || a.nodes > 1;
    let mut sets = vec!["shutdown.drain_ms=1000".to_owned()];
    sets.extend(a.sets.iter().cloned());
    let nodes = Nodes::start(&NodeOpts {
        bin: a.bin.clone(),
        nodes: a.nodes,
        workers: a.workers,
        redis,
        sets,
    })?;
    println!(
        "box: {} redix node(s) on {} ({} reactor(s) each{}), {} {} clients; load {}",
        a.nodes,
        nodes.addr,
        a.workers,
        if redis { ", Redis mode" } else { "" },
        a.conns,
        a.transport,
        loadavg()
    );
    let channel = format!("box-{}", std::process::id());
    let mut fleet = connect(a, &nodes, &channel)?;
    let mut publisher = Publisher::new(nodes.addr, &channel, a.payload);
    if a.churn_pct > 0.0 {
        churn(a, &mut fleet)?;
    }
    for &rate in &a.rates {
        check_interrupted()?;
        let base = pass(a, &nodes, &mut fleet, &mut publisher, rate, "")?;
        if a.stall_pct > 0.0 {
            let stalled = stall(a, &mut fleet)?;
            let with = pass(a, &nodes, &mut fleet, &mut publisher, rate, "stalled")?;
            compare(&base, &with, stalled, nodes.addr);
        }
    }
    println!("end: load {}", loadavg());
    drop(fleet);
    Ok(())
}

/// Σ VmRSS of the nodes once it stays within 256 KiB for 2 s (at most 30 s).
fn settled_rss(nodes: &Nodes) -> u64 {
    let end = Instant::now() + Duration::from_secs(30);
    let mut last = nodes.rss_kib();
    let mut since = Instant::now();
    while Instant::now() < end && !interrupted() {
        std::thread::sleep(Duration::from_millis(250));
        let now = nodes.rss_kib();
        if now.abs_diff(last) > 256 {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_secs(2) {
            return now;
        }
    }
    last
}

fn connect(a: &Args, nodes: &Nodes, channel: &str) -> Res<Fleet> {
    let rss0 = settled_rss(nodes);
    let k0 = kernel();
    let fleet = Fleet::start(&Spec {
        target: nodes.addr,
        conns: a.conns,
        per_gen: a.per_gen,
        per_source: a.per_source,
        first: 0,
        channel: channel.to_owned(),
        ws: a.transport == "ws",
        concurrency: a.concurrency,
        connect_timeout: a.connect_timeout,
    })?;
    let ready = fleet.collect(Duration::from_secs(a.connect_timeout + 120))?;
    let n = sum(&ready, "ready");
    let failed = sum(&ready, "failed");
    let first = ready.iter().filter_map(|v| v["first_us"].as_u64()).min();
    let last = ready.iter().filter_map(|v| v["last_us"].as_u64()).max();
    let span_s = match (first, last) {
        (Some(f), Some(l)) if l > f => (l - f) as f64 / 1e6,
        _ => 0.0,
    };
    let worst = |k: &str| {
        let v = ready.iter().filter_map(|v| v[k].as_f64());
        v.fold(0.0, f64::max)
    };
    let load_connected = loadavg();
    let rss1 = settled_rss(nodes);
    let k1 = kernel();
    let per = |kib: u64| kib as f64 * 1024.0 / n.max(1) as f64;
    let user = rss1.saturating_sub(rss0);
    let fds = nodes.fds();
    println!(
        "idle: {n} of {} clients ready ({failed} failed) from {} generator process(es) in {span_s:.1} s = {:.0} connections/s; connect→ready worst process p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; load {load_connected}",
        a.conns,
        fleet.len(),
        n as f64 / span_s.max(1e-9),
        worst("p50_ms"),
        worst("p99_ms"),
        worst("max_ms"),
    );
    println!(
        "  nodes alive {}/{}; fds per node {:?}",
        nodes.alive(),
        a.nodes,
        fds
    );
    println!(
        "  user space: Σ VmRSS of the nodes {rss0} → {rss1} KiB: {:.0} B per connection",
        per(user)
    );
    let mem = k1.tcp_mem_pages.saturating_sub(k0.tcp_mem_pages) * 4;
    let slab = k1.slab_kib.saturating_sub(k0.slab_kib);
    println!(
        "  kernel: sockstat TCP inuse {} → {} (TIME_WAIT {}), mem {} → {} pages (+{mem} KiB = {:.0} B per connection); Slab +{slab} KiB = {:.0} B per connection (both ends); MemAvailable {} → {} MiB",
        k0.tcp_inuse,
        k1.tcp_inuse,
        k1.tcp_tw,
        k0.tcp_mem_pages,
        k1.tcp_mem_pages,
        per(mem),
        per(slab),
        k0.avail_kib / 1024,
        k1.avail_kib / 1024
    );
    println!("  generators: Σ VmRSS {} KiB", fleet.rss_kib());
    println!(
        "{}",
        json!({"phase": "idle", "conns": a.conns, "ready": n, "failed": failed,
            "connect_secs": span_s, "connect_per_sec": n as f64 / span_s.max(1e-9),
            "rss_before_kib": rss0, "rss_after_kib": rss1, "rss_per_conn_b": per(user),
            "tcp_mem_pages": [k0.tcp_mem_pages, k1.tcp_mem_pages], "slab_kib": [k0.slab_kib, k1.slab_kib],
            "fds": fds, "load": load_connected})
    );
    if n == 0 {
        return Err("no client became ready".into());
    }
    Ok(fleet)
}

pub struct PassOut {
    rate: f64,
    per_sec: f64,
    p99: u64,
    rss_peak: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn pass(
    a: &Args,
    nodes: &Nodes,
    fleet: &mut Fleet,
    publisher: &mut Publisher,
    rate: f64,
    label: &str,
) -> Res<PassOut> {
    let subs = sum(&fleet.ask("stat", Duration::from_secs(30))?, "closed");
    let subs = (a.conns as u64).saturating_sub(subs);
    let pids = nodes.pids();
    let cpu = || pids.iter().map(|&p| cpu_ticks(p).unwrap_or(0)).sum::<u64>();
    let (cpu0, rss0) = (cpu(), nodes.rss_kib());
    let peak = Cell::new(rss0);
    let sampled = Cell::new(Instant::now());
    let start_ns = now_ns();
    let t0 = Instant::now();
    let soak = std::cell::RefCell::new(vec![(0.0, rss0, nodes.fds().iter().sum::<usize>())]);
    let p = publisher.run(rate, a.duration, || {
        if sampled.get().elapsed() > Duration::from_millis(250) {
            peak.set(peak.get().max(nodes.rss_kib()));
            sampled.set(Instant::now());
        }
        let mut s = soak.borrow_mut();
        let due = s.last().map_or(0.0, |l| l.0) + 10.0;
        if a.churn_pct > 0.0 && t0.elapsed().as_secs_f64() >= due {
            let fds = nodes.fds().iter().sum::<usize>();
            s.push((t0.elapsed().as_secs_f64(), nodes.rss_kib(), fds));
        }
        interrupted()
    });
    if a.churn_pct > 0.0 {
        soak_report(&soak.borrow());
    }
    let want = p.ok * subs;
    let (mut got, mut moved) = (0, Instant::now());
    let end = Instant::now() + Duration::from_secs(60);
    while got < want && moved.elapsed() < Duration::from_secs(5) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
        peak.set(peak.get().max(nodes.rss_kib()));
        let now = sum(&fleet.ask("stat", Duration::from_secs(30))?, "received");
        if now != got {
            (got, moved) = (now, Instant::now());
        }
    }
    let cpu_s = (cpu() - cpu0) as f64 / crate::support::proc::clk_tck();
    let vals = fleet.ask(&format!("pass {}", p.ok), Duration::from_secs(30))?;
    let mut h = Hist::default();
    for v in &vals {
        let b: Vec<[u64; 2]> = serde_json::from_value(v["hist"].clone()).unwrap_or_default();
        h.add_sparse(&b, v["max"].as_u64().unwrap_or(0));
    }
    let received = sum(&vals, "received");
    let last_ns = vals.iter().filter_map(|v| v["last_ns"].as_u64()).max();
    let secs = last_ns.unwrap_or(start_ns).saturating_sub(start_ns) as f64 / 1e9;
    let per_sec = received as f64 / secs.max(1e-9);
    let ms = |us: u64| us as f64 / 1e3;
    let tag = if label.is_empty() {
        String::new()
    } else {
        format!(" ({label})")
    };
    println!(
        "fanout {rate}/s × {subs} readers{tag}: published {}/{} ({} failed, slowest {:.1} ms); deliveries expected {want}, received {received}, lost {}, gaps {}, dups {}; readers with every event {}/{subs}; closed {}{}",
        p.ok,
        (rate * a.duration).round(),
        p.failed,
        ms(p.max_rtt_us),
        want.saturating_sub(received),
        sum(&vals, "gaps"),
        sum(&vals, "dups"),
        sum(&vals, "complete"),
        sum(&vals, "closed"),
        match a.churn_pct > 0.0 {
            true => format!(
                "; churning clients reopened {} times so far, received {} (not counted)",
                sum(&vals, "churned"),
                sum(&vals, "churn_received")
            ),
            false => String::new(),
        },
    );
    println!(
        "  {:.0} deliveries/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; nodes' CPU {cpu_s:.1} s ({:.2} µs per delivery); Σ RSS {rss0} → peak {} KiB; load {}",
        per_sec,
        ms(h.percentile(50.0)),
        ms(h.percentile(99.0)),
        ms(h.max),
        cpu_s * 1e6 / received.max(1) as f64,
        peak.get(),
        loadavg()
    );
    let out = PassOut {
        rate,
        per_sec,
        p99: h.percentile(99.0),
        rss_peak: peak.get(),
    };
    let v: Value = json!({"phase": "fanout", "label": label, "rate": rate, "subs": subs,
        "published": p.ok, "failed": p.failed, "expected": want, "received": received,
        "gaps": sum(&vals, "gaps"), "dups": sum(&vals, "dups"),
        "complete": sum(&vals, "complete"), "per_sec": per_sec,
        "p50_us": h.percentile(50.0), "p99_us": out.p99, "max_us": h.max,
        "cpu_s": cpu_s, "rss_kib": [rss0, out.rss_peak], "load": loadavg()});
    println!("{v}");
    Ok(out)
}

/// Opens the churning clients (spread over the generators).
fn churn(a: &Args, fleet: &mut Fleet) -> Res<()> {
    let k = (a.conns as f64 * a.churn_pct / 100.0).round() as usize;
    let n = fleet.len();
    let cmds: Vec<String> = (0..n)
        .map(|i| format!("churn {}", k / n + usize::from(i < k % n)))
        .collect();
    fleet.send_each(&cmds)?;
    let opened = sum(&fleet.collect(Duration::from_secs(30))?, "opened");
    std::thread::sleep(Duration::from_secs(2));
    println!("churning: {opened} more clients, each closed (half RST, half FIN) and reopened every second");
    Ok(())
}

/// The soak samples (s, Σ RSS KiB, Σ fds) and their least-squares slopes per minute.
fn soak_report(s: &[(f64, u64, usize)]) {
    let slope = |f: &dyn Fn(&(f64, u64, usize)) -> f64| {
        let n = s.len() as f64;
        let (mx, my) = (
            s.iter().map(|v| v.0).sum::<f64>() / n,
            s.iter().map(f).sum::<f64>() / n,
        );
        let sxy: f64 = s.iter().map(|v| (v.0 - mx) * (f(v) - my)).sum();
        let sxx: f64 = s.iter().map(|v| (v.0 - mx).powi(2)).sum();
        60.0 * sxy / sxx.max(1e-9)
    };
    let line: Vec<String> = s
        .iter()
        .map(|v| format!("{:.0}s {} KiB {} fds", v.0, v.1, v.2))
        .collect();
    println!("  soak samples: {}", line.join("; "));
    println!(
        "  soak slope (least squares over {} samples): RSS {:+.1} KiB/min, fds {:+.2}/min; RSS min {} max {} KiB, fds min {} max {}",
        s.len(),
        slope(&|v| v.1 as f64),
        slope(&|v| v.2 as f64),
        s.iter().map(|v| v.1).min().unwrap_or(0),
        s.iter().map(|v| v.1).max().unwrap_or(0),
        s.iter().map(|v| v.2).min().unwrap_or(0),
        s.iter().map(|v| v.2).max().unwrap_or(0),
    );
}

/// Opens the stalled clients (spread over the generators); returns how many.
fn stall(a: &Args, fleet: &mut Fleet) -> Res<u64> {
    let k = (a.conns as f64 * a.stall_pct / 100.0).round() as usize;
    let n = fleet.len();
    let cmds: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "stall {} {}",
                k / n + usize::from(i < k % n),
                a.stall_rcvbuf
            )
        })
        .collect();
    fleet.send_each(&cmds)?;
    let opened = sum(&fleet.collect(Duration::from_secs(30))?, "opened");
    // Let them connect and send their requests.
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "stalled: {opened} clients that never read (SO_RCVBUF {} B)",
        a.stall_rcvbuf
    );
    Ok(opened)
}

/// The readers' figures with and without the stalled clients, against the targets.
fn compare(base: &PassOut, with: &PassOut, stalled: u64, addr: std::net::SocketAddr) {
    let ratio = with.per_sec / base.per_sec.max(1e-9);
    let p99x = with.p99 as f64 / base.p99.max(1) as f64;
    let grew = with
        .rss_peak
        .saturating_sub(base.rss_peak.min(with.rss_peak));
    let cap_kib = stalled * 256;
    println!(
        "stalled vs not at {}/s: deliveries/s {:.0} vs {:.0} ({:+.1} %, target within 5 %: {}); p99 {:.1} vs {:.1} ms ({p99x:.2}×, target ≤ 1.2×: {}); RSS peak {} vs {} KiB (+{grew} KiB; {stalled} stalled × 256 KiB queue cap = {cap_kib} KiB: {})",
        base.rate,
        with.per_sec,
        base.per_sec,
        (ratio - 1.0) * 100.0,
        if (ratio - 1.0).abs() <= 0.05 { "met" } else { "MISSED" },
        with.p99 as f64 / 1e3,
        base.p99 as f64 / 1e3,
        if p99x <= 1.2 { "met" } else { "MISSED" },
        with.rss_peak,
        base.rss_peak,
        if grew <= cap_kib { "within" } else { "OVER" },
    );
    let (_, m) = get(addr, "/metrics/prom").unwrap_or_default();
    let metric = |name: &str| {
        let l = m.lines().find(|l| l.starts_with(name));
        l.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    println!(
        "  one node's counters: redix_slow_disconnects_total {}, redix_events_dropped_total{{reason=\"queue_full\"}} {}; reactor turns ≥ 100 ms {}, ≥ 1 s {}, longest per reactor {} / {} ms",
        metric("redix_slow_disconnects_total"),
        metric("redix_events_dropped_total{reason=\"queue_full\"}"),
        metric("redix_reactor_slow_turns_total{over=\"100ms\"}"),
        metric("redix_reactor_slow_turns_total{over=\"1s\"}"),
        metric("redix_worker_turn_max_ms{worker=\"0\"}"),
        metric("redix_worker_turn_max_ms{worker=\"1\"}"),
    );
}
