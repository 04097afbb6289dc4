//! What a scenario prints: its block of text, its JSON line (stdout and `--json-out`), and the
//! labels ("redix", "redix ws", "redix-redis sse", …) the tables share.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;

use serde_json::{json, Value};

use crate::attack_figs;
use crate::cli::{Args, Mode, Transport, TransportSel};
use crate::fanout::{per_delivery_us, FanoutResult};
use crate::idle::IdleResult;
use crate::jobs_park_figs;
use crate::server::Kind;
use crate::support::report::{ms, round, thousands};

/// The server's name: "redix", "nchan", or "redix-redis" for a Redis-mode cluster.
pub fn base_name(kind: Kind, mode: Mode) -> &'static str {
    match (kind, mode) {
        (Kind::Redix, Mode::Redis) => "redix-redis",
        _ => kind.name(),
    }
}

/// "redix" when the run is SSE only (as before --transport existed), else "redix sse" / "redix ws".
pub fn label(kind: Kind, mode: Mode, tr: Transport, a: &Args) -> String {
    let base = base_name(kind, mode);
    if a.transport == TransportSel::Sse {
        base.to_string()
    } else {
        format!("{base} {}", tr.tag())
    }
}

pub fn idle_json(kind: Kind, mode: Mode, tr: Transport, r: &IdleResult) -> Value {
    json!({
        "bench": "load", "target": kind.name(), "mode": mode.tag(), "transport": tr.tag(), "scenario": "idle", "round": r.round,
        "conns": r.conns, "ready": r.ready, "failed": r.failed, "dropped": r.dropped, "retries": r.retries,
        "setup_s": round(r.setup_s, 4), "handshakes_per_s": r.handshakes_per_s.round(),
        "rss_before_kib": r.rss_before, "rss_after_kib": r.rss_after, "rss_settled": r.settled,
        "settle_s": round(r.settle_s, 1),
        "rss_per_conn_bytes": r.per_conn_bytes.round(), "rss_per_conn_kib": round(r.per_conn_bytes / 1024.0, 3),
        "rss_after_close_kib": r.rss_closed,
        "server_cpu_setup_ms": round(r.server_cpu_setup_ms, 1),
        "setup_latency_us": {"p50": r.setup_hist.percentile(50.0), "p99": r.setup_hist.percentile(99.0), "max": r.setup_hist.max}, "loadgen_cpu_setup_pct": r.loadgen_cpu_setup_pct.round(), "first_error": r.first_err,
    })
}

pub fn fanout_json(kind: Kind, mode: Mode, tr: Transport, r: &FanoutResult) -> Value {
    let mut v = json!({
        "bench": "load", "target": kind.name(), "mode": mode.tag(), "transport": tr.tag(), "scenario": "fanout", "round": r.round,
        "subs": r.subs, "subs_ready": r.ready, "rate": r.rate, "duration_s": r.duration,
        "planned": r.planned, "sent": r.sent, "published_ok": r.published_ok, "publish_errors": r.publish_errors,
        "publish_rate": round(r.publish_rate, 1), "publish_max_lag_us": r.pub_max_lag_us, "publish_max_in_flight": r.pub_max_in_flight,
        "publish_rtt_p50_us": r.pub_rtt_p50_us, "publish_rtt_p99_us": r.pub_rtt_p99_us,
        "expected": r.expected, "received": r.received, "lost": r.lost, "extra": r.extra, "stale": r.stale,
        "dropped_streams": r.dropped, "slow_consumer_closes": r.slow_closed,
        "deliveries_per_s": r.deliveries_per_s.round(),
        "latency_us": {"p50": r.hist.percentile(50.0), "p90": r.hist.percentile(90.0),
                       "p99": r.hist.percentile(99.0), "max": r.hist.max, "mean": r.hist.mean().round()},
        "server_cpu_ms": round(r.cpu_ms, 1), "cpu_window_s": round(r.window_s, 2), "cpu_per_delivery_us": round(r.cpu_per_delivery_us, 3), "events_per_write": r.events_per_write.map(|e| round(e, 2)),
        "server_quiet_cpu_ms_per_s": round(r.quiet_cpu_ms_per_s, 1),
        "rss_before_kib": r.rss_before, "rss_end_kib": r.rss_end,
        "loadgen_cpu_pct": r.loadgen_cpu_pct.round(), "box_busy_pct": r.box_busy_pct.round(),
        "other_cpu_pct": r.other_pct().round(), "drain_s": round(r.drain_s, 2),
        "first_error": r.first_err,
    });
    if let Some(redis_ms) = r.redis_cpu_ms {
        v["redis_cpu_ms"] = json!(round(redis_ms, 1));
        v["redis_quiet_cpu_ms_per_s"] = json!(round(r.redis_quiet_ms_per_s.unwrap_or(0.0), 1));
        v["redis_cpu_per_delivery_us"] = json!(round(per_delivery_us(redis_ms, r.received), 3));
        v["redis_cpu_per_event_us"] = json!(round(per_delivery_us(redis_ms, r.published_ok), 1));
        v["redis_rss_end_kib"] = json!(r.redis_rss_end);
        v["nodes"] = r
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "node": n.name, "addr": n.addr.to_string(), "subs": n.subs, "subs_ready": n.ready,
                    "expected": n.expected, "received": n.hist.n, "lost": n.expected.saturating_sub(n.hist.n),
                    "latency_us": {"p50": n.hist.percentile(50.0), "p99": n.hist.percentile(99.0), "max": n.hist.max},
                    "server_cpu_ms": round(n.cpu_ms, 1),
                    "cpu_per_delivery_us": round(per_delivery_us(n.cpu_ms, n.hist.n), 3),
                    "rss_end_kib": n.rss_end,
                })
            })
            .collect();
    }
    if let Some(f) = &r.parked {
        v["parked"] = jobs_park_figs::park_json(f);
    }
    if let Some(f) = &r.attack {
        v["attack"] = attack_figs::json(f);
    }
    v
}

pub fn print_idle(name: &str, tr: Transport, r: &IdleResult) {
    let mut s = String::new();
    let round = if r.round > 1 {
        format!(" (round {})", r.round)
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "\n== {} idle: {} {} connections to one channel{round} ==",
        name,
        r.conns,
        tr.long()
    );
    let _ = writeln!(
        s,
        "  ready               {} / {}   (failed {}, dropped later {}, retried attempts {})",
        r.ready, r.conns, r.failed, r.dropped, r.retries
    );
    let _ = writeln!(
        s,
        "  setup               {:.3} s  →  {} handshakes/s (server CPU {:.0} ms, load generator {:.0} % of one core)",
        r.setup_s,
        thousands(r.handshakes_per_s),
        r.server_cpu_setup_ms,
        r.loadgen_cpu_setup_pct
    );
    let _ = writeln!(
        s,
        "  per connection      connect → ready p50 {} ms, p99 {} ms, max {} ms ({} at once)",
        ms(r.setup_hist.percentile(50.0)),
        ms(r.setup_hist.percentile(99.0)),
        ms(r.setup_hist.max),
        r.concurrency
    );
    let _ = writeln!(
        s,
        "  server RSS          before {} KiB, after {} KiB ({}settled after {:.1} s)",
        thousands(r.rss_before as f64),
        thousands(r.rss_after as f64),
        if r.settled { "" } else { "NOT " },
        r.settle_s
    );
    let _ = writeln!(
        s,
        "  RSS per idle conn   {} bytes = {:.2} KiB",
        thousands(r.per_conn_bytes),
        r.per_conn_bytes / 1024.0
    );
    let _ = writeln!(
        s,
        "  RSS after closing   {} KiB",
        thousands(r.rss_closed as f64)
    );
    if let Some(e) = &r.first_err {
        let _ = writeln!(s, "  first error         {e}");
    }
    print!("{s}");
}

pub fn print_fanout(name: &str, tr: Transport, r: &FanoutResult) {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n== {} fanout: {} {}subscribers{} × {} events/s × {} s{}{} ==",
        name,
        r.subs,
        match tr {
            Transport::Sse => "",
            Transport::Ws => "WebSocket ",
        },
        if r.nodes.is_empty() {
            String::new()
        } else {
            format!(" over {} nodes (publishing to node A)", r.nodes.len())
        },
        r.rate,
        r.duration,
        if r.round > 1 {
            format!(" (round {})", r.round)
        } else {
            String::new()
        },
        match (&r.attack, &r.parked) {
            (Some(f), _) if f.attacking => ", pipelining attacker",
            (Some(_), _) => ", no attacker",
            (None, Some(_)) => ", parked summarize requests beside it",
            (None, None) => "",
        }
    );
    let _ = writeln!(s, "  subscribers ready   {} / {}", r.ready, r.subs);
    let _ = writeln!(
        s,
        "  published           {} ok of {} planned ({} not sent within the {} s), {} errors; {:.1} events/s achieved; max pacing lag {} ms; publish RTT p50/p99 {}/{} ms; up to {} in flight",
        r.published_ok,
        r.planned,
        r.planned - r.sent,
        r.duration,
        r.publish_errors,
        r.publish_rate,
        ms(r.pub_max_lag_us),
        ms(r.pub_rtt_p50_us),
        ms(r.pub_rtt_p99_us),
        r.pub_max_in_flight
    );
    deliveries(&mut s, r);
    cpu_lines(&mut s, r);
    generator_line(&mut s, r);
    if let Some(f) = &r.parked {
        s.push_str(&jobs_park_figs::park_text(f));
    }
    if let Some(f) = &r.attack {
        s.push_str(&attack_figs::text(f));
    }
    if let Some(e) = &r.first_err {
        let _ = writeln!(s, "  first error         {e}");
    }
    print!("{s}");
}
/// The deliveries: counts, loss, rate and latency.
fn deliveries(s: &mut String, r: &FanoutResult) {
    let h = &r.hist;
    let lost_pct = if r.expected > 0 {
        r.lost as f64 * 100.0 / r.expected as f64
    } else {
        0.0
    };
    let _ = writeln!(
        s,
        "  deliveries          expected {}, received {}, lost {} ({:.3} %), extra {}, stale {}, streams dropped {}{}",
        thousands(r.expected as f64),
        thousands(r.received as f64),
        thousands(r.lost as f64),
        lost_pct,
        r.extra,
        r.stale,
        r.dropped,
        if r.slow_closed > 0 {
            format!(" ({} of them as slow consumers)", r.slow_closed)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "  delivery rate       {} deliveries/s (drain {:.2} s after the last publish)",
        thousands(r.deliveries_per_s),
        r.drain_s
    );
    let _ = writeln!(
        s,
        "  latency (ms)        p50 {}  p90 {}  p99 {}  max {}  mean {}",
        ms(h.percentile(50.0)),
        ms(h.percentile(90.0)),
        ms(h.percentile(99.0)),
        ms(h.max),
        ms(h.mean() as u64)
    );
}

/// Server CPU (per node and redis-server's in Redis mode) and RSS.
fn cpu_lines(s: &mut String, r: &FanoutResult) {
    let _ = writeln!(
        s,
        "  server CPU          {:.0} ms over {:.1} s  →  {:.3} µs per delivery (quiet baseline before publishing: {:.1} ms/s){}",
        r.cpu_ms,
        r.window_s,
        r.cpu_per_delivery_us,
        r.quiet_cpu_ms_per_s,
        if r.nodes.is_empty() {
            String::new()
        } else {
            format!("; the {} redix nodes together", r.nodes.len())
        }
    );
    if let Some(e) = r.events_per_write {
        let _ = writeln!(
            s,
            "  writes              {e:.2} events per writev (redix's counters, first node)"
        );
    }
    for n in &r.nodes {
        let _ = writeln!(
            s,
            "  node {}              {} / {} subscribers ready; received {} of {} (lost {}); latency p50 {}  p99 {}  max {} ms; CPU {:.0} ms → {:.3} µs per delivery; RSS {} KiB ({})",
            n.name,
            n.ready,
            n.subs,
            thousands(n.hist.n as f64),
            thousands(n.expected as f64),
            thousands(n.expected.saturating_sub(n.hist.n) as f64),
            ms(n.hist.percentile(50.0)),
            ms(n.hist.percentile(99.0)),
            ms(n.hist.max),
            n.cpu_ms,
            per_delivery_us(n.cpu_ms, n.hist.n),
            thousands(n.rss_end as f64),
            n.addr
        );
    }
    if let Some(redis_ms) = r.redis_cpu_ms {
        let _ = writeln!(
            s,
            "  redis-server CPU    {:.0} ms  →  {:.3} µs per delivery, {:.1} µs per published event (quiet baseline: {:.1} ms/s); RSS {} KiB at the end",
            redis_ms,
            per_delivery_us(redis_ms, r.received),
            per_delivery_us(redis_ms, r.published_ok),
            r.redis_quiet_ms_per_s.unwrap_or(0.0),
            thousands(r.redis_rss_end.unwrap_or(0) as f64)
        );
    }
    let _ = writeln!(
        s,
        "  server RSS          {} KiB before publishing, {} KiB at the end{}",
        thousands(r.rss_before as f64),
        thousands(r.rss_end as f64),
        if r.nodes.is_empty() {
            ""
        } else {
            " (redix nodes together)"
        }
    );
}

/// The generator's CPU and the whole box's, split by who used it.
fn generator_line(s: &mut String, r: &FanoutResult) {
    let redis_part = if r.redis_cpu_ms.is_some() {
        format!("redis-server {:.0} %, ", r.redis_pct())
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "  load generator CPU  {:.0} % of one core; whole box busy {:.0} % of one core ({} cores): server {:.0} %, {redis_part}generator {:.0} %, everything else {:.0} %",
        r.loadgen_cpu_pct,
        r.box_busy_pct,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        r.server_pct(),
        r.loadgen_cpu_pct,
        r.other_pct()
    );
}

pub fn emit_json(v: &Value, a: &Args) {
    let line = v.to_string();
    println!("{line}");
    if let Some(p) = &a.json_out {
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(p) {
            let _ = writeln!(f, "{line}");
        }
    }
}
