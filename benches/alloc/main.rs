//! Allocations on the delivery path, counted in-process.
//!
//! `cargo bench --bench alloc -- [--subs 1,100] [--events 200]`
//!
//! A counting global allocator, and redix started in this process
//! (`redix::server::start`, one reactor on 127.0.0.1:0). For each wire
//! variant — SSE, SSE gzip, WebSocket, WebSocket permessage-deflate — the
//! bench opens S real loopback clients on a fresh channel, publishes
//! through `Hub::publish` from its own thread, and waits for the
//! reactor's `events_written` to show every delivery written to a socket
//! (so the window covers hub → mailbox → fan-out → enqueue → writev).
//! Two patterns: *paced* (one publish, wait until written: one event per
//! write) and *burst* (every publish back to back, then wait: writes coalesce).
//!
//! Allocations are counted by the thread that makes them: the publishing
//! thread (the hub: id, encoding once, history), the bench's own threads
//! (clients, not counted) and every other thread, i.e. redix's (the
//! reactor: fan-out, enqueue, flush; compression on first need). Per
//! delivery = the growth of the reactor's count per publish from S = 1 to
//! the largest S, divided by the added subscribers.
//!
//! Last, `sse-composite`: the per-stream `id:` of Redis Cluster mode's
//! composite cursor, measured without sockets (see `composite.rs`).

mod clients;
mod composite;
mod counting;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use redix::config::{Cli, Config};
use redix::server::{self, Running};
use redix::state::Shared;

use clients::{Drainer, Variant};
use counting::{Role, Snapshot};

#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

#[derive(Parser, Debug)]
#[command(about = "Allocations per publish and per delivery on redix's hub → socket path")]
struct Args {
    /// Subscriber counts to run each variant with (the slope between the
    /// first and the last gives allocations per delivery).
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    subs: Vec<usize>,
    /// Publishes measured per pattern (after as many for warm-up).
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Allocations in one measured window.
#[derive(Debug, Clone, Copy)]
struct Window {
    publishes: usize,
    deliveries: u64,
    write_calls: u64,
    server: Snapshot,
    publisher: Snapshot,
}

fn main() {
    counting::set_role(Role::Bench);
    let args = Args::parse();
    let running = start_redix();
    let addr = running.addr;
    println!("redix in-process on {addr}, 1 reactor; allocations counted per thread");
    println!(
        "{:<14} {:<7} {:>5} {:>13} {:>13} {:>13} {:>13}",
        "variant",
        "pattern",
        "subs",
        "publisher/pub",
        "reactor/pub",
        "reactor B/pub",
        "writes/deliv"
    );
    let mut round = 0;
    for variant in Variant::ALL {
        let mut rows = Vec::new();
        for &subs in &args.subs {
            round += 1;
            let channel = format!("alloc{round}");
            let drainer = Drainer::open(addr, &channel, variant, subs);
            for paced in [true, false] {
                measure(&running.shared, &channel, args.events, subs, paced); // warm-up
                let w = measure(&running.shared, &channel, args.events, subs, paced);
                print_row(variant, paced, subs, &w);
                rows.push((paced, subs, w));
            }
            drainer.close();
        }
        print_slopes(variant, &rows);
    }
    running.stop();
    let _ = running.join();
    composite::run(args.events);
}

fn start_redix() -> Running {
    let cli = Cli::parse_from([
        "redix",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--sse-per-ip",
        "1000000",
        "--set",
        "limits.ws_per_ip=1000000",
        "--set",
        "limits.http_per_ip=1000000",
        // Heartbeats and pings are timer frames, not deliveries: one that
        // fell into a measured window (after 15 s of bench) grew every
        // busy queue by a slot and was counted against the deliveries.
        "--set",
        "sse.heartbeat_ms=3600000",
        "--set",
        "ws.ping_ms=3600000",
        "--set",
        "ws.idle_timeout_ms=3600000",
    ]);
    let config = Config::load(&cli).expect("bench configuration");
    server::start(config).expect("start redix in-process")
}

/// A ~100-byte event's padding.
const PAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789";

fn written(shared: &Shared) -> u64 {
    let stats = shared.stats.iter();
    stats
        .map(|s| s.events_written.load(Ordering::Relaxed))
        .sum()
}

fn write_calls(shared: &Shared) -> u64 {
    let stats = shared.stats.iter();
    stats.map(|s| s.write_calls.load(Ordering::Relaxed)).sum()
}

/// Waits until `target` events have been written to sockets.
fn wait_written(shared: &Shared, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while written(shared) < target {
        assert!(
            Instant::now() < deadline,
            "deliveries stalled below {target}"
        );
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Publishes `events` events to `channel` (paced: each written before the
/// next) and counts what every thread allocated meanwhile.
fn measure(shared: &Arc<Shared>, channel: &str, events: usize, subs: usize, paced: bool) -> Window {
    let (start_written, start_calls) = (written(shared), write_calls(shared));
    let before = (
        counting::snapshot(Role::Server),
        counting::snapshot(Role::Publisher),
    );
    let mut data = String::with_capacity(128);
    for i in 0..events {
        data.clear();
        // ~100 bytes of JSON, different each time (bench thread: not counted).
        data.push_str(&format!(r#"{{"seq":{i:08},"pad":"{PAD}"}}"#));
        counting::set_role(Role::Publisher);
        shared.hub.publish(channel, &data, None, shared.now_ms());
        counting::set_role(Role::Bench);
        if paced {
            wait_written(shared, start_written + (i as u64 + 1) * subs as u64);
        }
    }
    let target = start_written + (events * subs) as u64;
    wait_written(shared, target);
    // Let the reactor finish the turn that wrote the last bytes.
    std::thread::sleep(Duration::from_millis(20));
    Window {
        publishes: events,
        deliveries: written(shared) - start_written,
        write_calls: write_calls(shared) - start_calls,
        server: counting::snapshot(Role::Server) - before.0,
        publisher: counting::snapshot(Role::Publisher) - before.1,
    }
}

fn print_row(variant: Variant, paced: bool, subs: usize, w: &Window) {
    let per = |x: u64| x as f64 / w.publishes as f64;
    let writes = w.write_calls as f64 / w.deliveries.max(1) as f64;
    println!(
        "{:<14} {:<7} {:>5} {:>13.2} {:>13.2} {:>13.0} {:>13.3}",
        variant.name(),
        if paced { "paced" } else { "burst" },
        subs,
        per(w.publisher.allocs),
        per(w.server.allocs),
        per(w.server.bytes),
        writes,
    );
}

/// Allocations per delivery: the reactor's allocations per publish grow
/// by this much per added subscriber.
fn print_slopes(variant: Variant, rows: &[(bool, usize, Window)]) {
    for paced in [true, false] {
        let mut of = rows.iter().filter(|r| r.0 == paced);
        let (Some(first), Some(last)) = (of.next(), of.next_back()) else {
            continue;
        };
        let per_pub = |w: &Window| w.server.allocs as f64 / w.publishes as f64;
        let added = (last.1 - first.1) as f64;
        let slope = (per_pub(&last.2) - per_pub(&first.2)) / added;
        let line = format!(
            "  → {} {}: {slope:.4} allocations per delivery (reactor, {} → {} subscribers)",
            variant.name(),
            if paced { "paced" } else { "burst" },
            first.1,
            last.1
        );
        println!("{line}");
        println!(
            "{{\"bench\":\"alloc\",\"variant\":\"{}\",\"pattern\":\"{}\",\"allocs_per_delivery\":{slope:.4},\"reactor_allocs_per_publish\":{:.2},\"publisher_allocs_per_publish\":{:.2},\"subs\":{}}}",
            variant.name(),
            if paced { "paced" } else { "burst" },
            per_pub(&last.2),
            last.2.publisher.allocs as f64 / last.2.publishes as f64,
            last.1
        );
    }
}
