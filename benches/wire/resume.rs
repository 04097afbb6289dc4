//! Scenario 2, the cost of resume: H events published (pipelined) to a channel nobody
//! listens to, then K clients replaying all of them at once, per transport (see `replay`).

use std::net::SocketAddr;
use std::time::Instant;

use serde_json::{json, Value};

use crate::client::{metrics, publish_request, KeepAlive};
use crate::replay::{replay_phase, ReplayResult, REPLAY_CHANNEL};
use crate::server::Server;
use crate::support::proc::rss_kib;
use crate::support::report::{header, round, thousands};
use crate::support::spawn::check_interrupted;
use crate::trades::Trades;
use crate::{Args, Res, TransportSel};

/// Publishes `h` events of `size`-byte data, pipelined; returns (first id, last id, secs).
fn fill_history(addr: SocketAddr, h: u64, size: usize) -> Res<(u64, u64, f64)> {
    let mut p = KeepAlive::connect(addr)?;
    let mut trades = Trades::new(99);
    let t0 = Instant::now();
    let (mut first, mut last) = (0, 0);
    let mut sent = 0u64;
    const DEPTH: u64 = 256;
    while sent < h {
        check_interrupted()?;
        let k = DEPTH.min(h - sent);
        let mut reqs = Vec::with_capacity(k as usize * (size + 150));
        for i in 0..k {
            let t = trades.next();
            // {"seq":N,"trade":{...},"pad":"xx"} padded to `size` bytes.
            let base = format!(r#"{{"seq":{},"trade":{t},"pad":""}}"#, sent + i);
            let pad = size.saturating_sub(base.len());
            let data = format!(
                r#"{{"seq":{},"trade":{t},"pad":"{}"}}"#,
                sent + i,
                "x".repeat(pad)
            );
            reqs.extend_from_slice(&publish_request(REPLAY_CHANNEL, &data));
        }
        p.send(&reqs)?;
        for _ in 0..k {
            let id = p.publish_answer()?;
            if first == 0 {
                first = id;
            }
            if id <= last {
                return Err(format!("publish ids not increasing: {last} then {id}"));
            }
            last = id;
        }
        sent += k;
    }
    Ok((first, last, t0.elapsed().as_secs_f64()))
}

/// redix with room for the whole history and the replays' queues.
fn start_server(a: &Args) -> Res<Server> {
    let args = [
        "--set",
        "history.max_events=100000",
        "--sse-per-ip",
        "100000",
        "--set",
        "limits.ws_per_ip=100000",
        "--set",
        "queue.max_events=200000",
        "--set",
        "queue.max_bytes=268435456",
    ];
    let srv = Server::start(a, &args)?;
    println!(
        "\nredix pid {} on {} with {}",
        srv.pid,
        srv.addr,
        srv.args.join(" ")
    );
    Ok(srv)
}

/// Fills the history and says what it holds; false if redix holds a different count.
fn fill_and_report(srv: &Server, a: &Args) -> Res<(bool, u64, f64)> {
    let rss_empty = rss_kib(srv.pid)?;
    let (first, last, secs) = fill_history(srv.addr, a.events, a.payload_bytes)?;
    let m = metrics(srv.addr)?;
    let hist = m.get("redix_history_events").copied().unwrap_or(-1.0);
    let hist_bytes = m.get("redix_history_bytes").copied().unwrap_or(-1.0);
    println!(
        "\n== the cost of resume: H = {} events ({}-byte data) in history, K = {} clients at once ==",
        a.events, a.payload_bytes, a.clients
    );
    println!(
        "published {} events in {:.2} s pipelined ({} events/s), ids {first}..{last}; \
         redix_history_events {hist}, redix_history_bytes {}; VmRSS {} KiB empty → {} KiB with the history",
        a.events,
        secs,
        thousands(a.events as f64 / secs),
        thousands(hist_bytes),
        thousands(rss_empty as f64),
        thousands(rss_kib(srv.pid)? as f64),
    );
    let ok = hist == a.events as f64;
    if !ok {
        println!("!! redix_history_events is {hist}, expected {}", a.events);
    }
    Ok((ok, last, secs))
}

pub fn run_resume(a: &Args, json_lines: &mut Vec<Value>) -> Res<bool> {
    let mut srv = start_server(a)?;
    let (mut ok, last, secs) = fill_and_report(&srv, a)?;
    let transports: &[bool] = match a.transport {
        TransportSel::Sse => &[false],
        TransportSel::Ws => &[true],
        TransportSel::Both => &[false, true],
    };
    println!(
        "{}",
        header(&[
            ("", -4),
            ("complete", 9),
            ("time s", 8),
            ("replayed ev/s", 13),
            ("srv CPU s", 10),
            ("srv CPU%", 9),
            ("ns CPU/ev", 11),
            ("MB/s", 9),
            ("VmRSS KiB bef→aft", 20),
            ("after close", 10),
            ("bench CPU", 9),
            ("replayed", 9)
        ])
    );
    let mut results = Vec::new();
    for &ws in transports {
        check_interrupted()?;
        let r = replay_phase(&mut srv, a, ws, last)?;
        ok &= print_row(&r);
        results.push(r);
    }
    for r in &results {
        print_details(r);
        json_lines.push(result_json(r, a, secs));
    }
    println!("redix: {}", srv.stop());
    Ok(ok)
}

/// The table row of one replay; false unless every client got everything, exactly once.
fn print_row(r: &ReplayResult) -> bool {
    let total = r.k as f64 * r.h as f64;
    let good = r.complete == r.k && r.replayed == total && r.resets == 0 && r.errors.is_empty();
    println!(
        "{:<4} {:>5}/{:<3} {:>8.2} {:>13} {:>10.2} {:>8.0}% {:>11.0} {:>9.0} {:>20} {:>10} {:>8.2}s {:>9}{}",
        r.transport,
        r.complete,
        r.k,
        r.secs,
        thousands(total / r.secs),
        r.server_cpu,
        r.server_cpu / r.secs * 100.0,
        r.server_cpu / total * 1e9,
        r.bytes as f64 / r.secs / 1e6,
        format!(
            "{}→{}",
            thousands(r.rss_before as f64),
            thousands(r.rss_after as f64)
        ),
        thousands(r.rss_closed as f64),
        r.bench_cpu,
        thousands(r.replayed),
        if r.replayed == total {
            String::new()
        } else {
            format!("  (expected {})", thousands(total))
        }
    );
    good
}

/// The line under the table for one replay.
fn print_details(r: &ReplayResult) {
    println!(
        "{}: peak VmRSS so far (VmHWM) {} KiB; server CPU {:.2} s of which kernel {:.2} s; redix_write_calls_total +{} ({:.0} events/call); \
         {} bytes read ({:.0} B/event), {} reads ({:.0} KiB/read), first byte after {:.1}..{:.1} ms, \
         resets {}, order errors {}{}",
        r.transport,
        thousands(r.hwm as f64),
        r.server_cpu,
        r.server_sys,
        r.write_calls,
        r.k as f64 * r.h as f64 / r.write_calls.max(1.0),
        thousands(r.bytes as f64),
        r.bytes as f64 / (r.k as f64 * r.h as f64),
        thousands(r.reads as f64),
        r.bytes as f64 / r.reads.max(1) as f64 / 1024.0,
        r.first_byte_ms.0,
        r.first_byte_ms.1,
        r.resets,
        r.order_errors,
        if r.errors.is_empty() {
            String::new()
        } else {
            format!("; errors: {}", r.errors.join(" | "))
        }
    );
}

/// The JSON line of one replay; `secs`: how long filling the history took.
fn result_json(r: &ReplayResult, a: &Args, secs: f64) -> Value {
    let total = r.k as f64 * r.h as f64;
    json!({
        "bench": "wire", "scenario": "resume", "transport": r.transport,
        "clients": r.k, "history_events": r.h, "payload_bytes": a.payload_bytes,
        "clients_complete": r.complete, "secs": round(r.secs, 3),
        "replayed_events_per_sec": round(total / r.secs, 0),
        "server_cpu_secs": round(r.server_cpu, 2),
        "server_sys_secs": round(r.server_sys, 2),
        "write_calls": r.write_calls,
        "server_cpu_ns_per_event": round(r.server_cpu / total * 1e9, 1),
        "bench_cpu_secs": round(r.bench_cpu, 2),
        "rss_kib_before": r.rss_before, "rss_kib_after": r.rss_after, "rss_kib_after_close": r.rss_closed, "vm_hwm_kib": r.hwm,
        "redix_replayed_total_delta": r.replayed, "expected_replayed": total,
        "bytes_read": r.bytes, "reads": r.reads, "resets": r.resets, "order_errors": r.order_errors,
        "first_byte_ms_min": round(r.first_byte_ms.0, 1), "first_byte_ms_max": round(r.first_byte_ms.1, 1),
        "errors": r.errors,
        "publish_events_per_sec": round(a.events as f64 / secs, 0),
    })
}
