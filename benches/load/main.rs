//! Load benchmark for redix (and nchan, its peer), as described in BENCHMARKS.md.
//!
//! `cargo bench --bench load -- [--target redix|nchan|both] [--transport sse|ws|both]
//!  [--scenario idle|fanout|all|market|jobs] [--mode embedded|redis|both] [--plan SUBSxRATE,...] ...`
//!
//! Every scenario runs over SSE, over WebSocket, or both (`--transport`, default both; each
//! server × transport gets a freshly started server, the same binary).
//!
//! * idle: N SSE connections to one channel; server RSS per idle connection
//!   ((VmRSS after − VmRSS before) / N, from /proc/PID/status) and the client-side
//!   connection setup rate (TCP connect + request + response headers, plus redix's
//!   first `retry:` line).
//! * fanout: S subscribers on one channel, a publisher at E events/s for D seconds with
//!   ~100-byte payloads carrying `"t":<ns since epoch>`; publish→receive latency
//!   histogram, deliveries/s, loss, and server CPU per delivery
//!   (Δ utime+stime from /proc/PID/stat / deliveries received).
//! * WebSocket (`--transport ws`): the mio loops do the client handshake themselves (GET with
//!   `Upgrade: websocket` and a random key, the `101` and its `Sec-WebSocket-Accept` checked),
//!   then for redix send a masked `{"type":"subscribe","channel":…}` text frame; a connection
//!   is ready at the `subscribed` ack (nchan: at the `101`, `GET /sub/CH` subscribes). Server
//!   frames are parsed incrementally (7/16/64-bit lengths, split across reads, several per
//!   read, fragmented messages), pings are answered with masked pongs, `"t"` is taken from
//!   each text message. Publishing is the same HTTP publisher as for SSE.
//!
//! * Redis mode (`--mode redis`, or `--mode both` for embedded and Redis side by side): the
//!   bench starts its own `redis-server` on a free loopback port and `--redis-nodes` (2) redix
//!   nodes with `--redis redis://127.0.0.1:PORT` (`--redis-node-workers` reactors each), waits
//!   for `/readyz` 200 on every node, splits the subscribers evenly over the nodes (connection
//!   i → node i mod N) and publishes to node A; deliveries, loss and latency are reported in
//!   total and per node, CPU per delivery per node and for the redix nodes together, plus
//!   redis-server's CPU. `--plan 1000x20,10000x100` pairs subscriber counts with rates.
//!
//! The generator runs one mio event loop per thread (2 threads by default), non-blocking
//! sockets bound to source addresses 127.0.0.2, 127.0.0.3, … (so the ephemeral port range
//! is per source address), latencies go into a fixed log-linear histogram. The publisher is a
//! keep-alive HTTP/1.1 client on its own thread with deadline-based pacing. Everything is
//! bounded in time; servers it starts are stopped on exit (and get PR_SET_PDEATHSIG).
//! Load only ever goes to 127.0.0.0/8.
//!
//! * market (`--scenario market`, redix only, not part of `all`): a `redix finnhub-sim`
//!   process at `--market-rate` trades/s per symbol, redix pointed at it (`market.url`), `--subs`
//!   subscribers spread over `--market-symbols` symbols; trades delivered/s, upstream → client
//!   latency from each trade's `"t"` (ms resolution), CPU per delivery, RSS, the simulator's CPU.
//!
//! * `--attacker pipeline` (fanout only): while publishing, connections from 127.0.0.250 pipeline
//!   `GET /metrics/prom` without ever reading, a probe asks `/readyz` each second and the
//!   server's VmRSS is sampled (`attack`, figures in `attack_figs`); `--attacker compare` runs
//!   everything without, then with the attacker and checks the hardening's acceptance figures.
//!
//! * jobs (`--scenario jobs`, redix embedded only, not part of `all`): redix with no job worker
//!   (`jobs.demo_worker=false`) and its breaker held closed. First `--jobs-rounds` (10) bursts
//!   of `--jobs-clients` (200) concurrent `POST /api/summarize?wait=0` from one source address
//!   each, a new URL every request: latency from the write to the whole `202` (p50/p99/max),
//!   every answer checked to be `202` pending; then `--jobs-window-rounds` (1) without `?wait=`
//!   (the `202` after the quick-check window). Then every fanout run twice, each on a fresh
//!   server: without, and with `--jobs-clients` requests parked (`?wait=--jobs-park-wait`,
//!   re-posted as each `202` comes back) throughout; subscribers' latency, CPU per delivery,
//!   the ratio, and the requests in flight (`jobs`, `jobs_submit`, `jobs_park`, `jobs_conn`;
//!   figures and checks in `jobs_figs`, `jobs_park_figs`).
//!
//! Layout: `cli` (flags) → `deployment` (`server`, `peers`: the processes measured) →
//! scenarios `idle` and `fanout`, which drive `worker` (generator threads running `conn`s,
//! whose bytes `event` parses into `hist`) and `publisher`; `market` and `jobs` run their own
//! passes; `output` and `tables` print. `support` is shared with the wire bench.

mod attack;
mod attack_figs;
mod cli;
mod conn;
mod deployment;
mod event;
mod fanout;
mod floor;
mod hist;
mod idle;
mod jobs;
mod jobs_conn;
mod jobs_figs;
mod jobs_park;
mod jobs_park_figs;
mod jobs_submit;
mod market;
mod market_out;
mod output;
mod peers;
mod plan;
mod publisher;
mod server;
#[path = "../support/mod.rs"]
mod support;
mod tables;
mod worker;

use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;

use cli::{
    attack_passes, fanout_plan, Args, AttackerSel, Mode, ModeSel, Pass, ScenarioSel, TargetSel,
    Transport, TransportSel,
};
use deployment::Deployment;
use output::{base_name, emit_json, fanout_json, idle_json, label, print_fanout, print_idle};
use server::Kind;
use support::proc::{box_busy_pct, box_cpu};
use support::spawn::{install_signal_handlers, interrupted};
use tables::{attack_comparisons, comparison_table, rounds_table, TargetResult};
use worker::SrcAlloc;

type Res<T> = Result<T, String>;

/// ns since the UNIX epoch (what an event's `"t"` carries).
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Raises the soft open-file limit to the hard one; returns the limit in force.
fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            if r.rlim_cur < r.rlim_max {
                r.rlim_cur = r.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            }
            return r.rlim_cur as u64;
        }
    }
    0
}

/// Every server × transport (× mode, for redix) of the run, in order. Each gets a freshly
/// started server (idle RSS is only comparable from a fresh process: a warm allocator reuses
/// what earlier connections left). Embedded and Redis mode of one transport run one after
/// the other.
fn runs(a: &Args) -> Vec<(Kind, Transport, Mode)> {
    let kinds = match a.target {
        TargetSel::Redix => vec![Kind::Redix],
        TargetSel::Nchan => vec![Kind::Nchan],
        TargetSel::Both => vec![Kind::Redix, Kind::Nchan],
    };
    let transports = match a.transport {
        TransportSel::Sse => vec![Transport::Sse],
        TransportSel::Ws => vec![Transport::Ws],
        TransportSel::Both => vec![Transport::Sse, Transport::Ws],
    };
    let modes = match a.mode {
        ModeSel::Embedded => vec![Mode::Embedded],
        ModeSel::Redis => vec![Mode::Redis],
        ModeSel::Both => vec![Mode::Embedded, Mode::Redis],
    };
    kinds
        .iter()
        .flat_map(|&k| transports.iter().map(move |&t| (k, t)))
        .flat_map(|(k, t)| {
            let ms = if k == Kind::Redix {
                modes.clone()
            } else {
                vec![Mode::Embedded]
            };
            ms.into_iter().map(move |m| (k, t, m))
        })
        .collect()
}

fn run(a: &Args) -> Res<bool> {
    let nofile = raise_nofile();
    let need = fanout_plan(a)
        .iter()
        .map(|p| p.subs)
        .fold(a.conns, usize::max)
        + if a.scenario == ScenarioSel::Jobs {
            a.jobs_clients
        } else {
            0
        }
        + 64;
    if nofile < need as u64 {
        return Err(format!(
            "open-file limit {nofile} is below the {need} this run needs; lower --conns/--subs"
        ));
    }
    if a.attacker != AttackerSel::None {
        if a.scenario != ScenarioSel::Fanout {
            return Err("--attacker needs --scenario fanout".into());
        }
        attack::check_args(a)?;
    }
    let mut srcs = SrcAlloc { next: 2 };
    if a.scenario == ScenarioSel::Market {
        return run_market_all(a, &mut srcs);
    }
    if a.scenario == ScenarioSel::Jobs {
        return jobs::run_jobs_all(a, &mut srcs);
    }
    let mut results = Vec::new();
    'passes: for pass in attack_passes(a) {
        for (kind, transport, mode) in runs(a) {
            results.push(run_target(kind, transport, mode, pass, a, &mut srcs));
            if interrupted() {
                break 'passes;
            }
        }
    }
    let checks_ok = print_summary(&results, a);
    if interrupted() {
        return Err("interrupted".into());
    }
    Ok(checks_ok && results.iter().all(|r| r.errors.is_empty()))
}

/// `--scenario market`: each transport in turn against a fresh simulator and redix.
fn run_market_all(a: &Args, srcs: &mut SrcAlloc) -> Res<bool> {
    if a.target == TargetSel::Nchan
        || a.mode != ModeSel::Embedded
        || a.attacker != AttackerSel::None
    {
        return Err(
            "--scenario market runs redix in embedded mode only, without --attacker".into(),
        );
    }
    let mut ok = true;
    let mut notes = Vec::new();
    for (_, tr, _) in runs(a).into_iter().filter(|r| r.0 == Kind::Redix) {
        let name = label(Kind::Redix, Mode::Embedded, tr, a);
        let (r, note) = market::run_market(a, tr, srcs);
        match r {
            Ok(r) => {
                market_out::print_market(&name, tr, &r);
                emit_json(&market_out::market_json(tr, &r), a);
            }
            Err(e) => {
                eprintln!("[{name}] market failed: {e}");
                notes.push(format!("{name} ERROR market: {e}"));
                ok = false;
            }
        }
        notes.push(format!("{name}: {note}"));
        if interrupted() {
            return Err("interrupted".into());
        }
    }
    println!();
    for n in notes {
        println!("{n}");
    }
    Ok(ok)
}

/// One server × transport × mode: start it, run every round, stop it.
fn run_target(
    kind: Kind,
    transport: Transport,
    mode: Mode,
    pass: Pass,
    a: &Args,
    srcs: &mut SrcAlloc,
) -> TargetResult {
    let name = label(kind, mode, transport, a) + pass.tag();
    let mut tr = TargetResult {
        kind,
        mode,
        transport,
        pass,
        idle: vec![],
        fanout: vec![],
        errors: vec![],
        note: String::new(),
        exit: String::new(),
    };
    let mut dep = match Deployment::start(kind, mode, a, transport) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("[{name}] cannot start: {e}");
            tr.errors.push(format!("start: {e}"));
            return tr;
        }
    };
    tr.note = dep.note();
    // Is anything else busy on the box? (The figures assume it is not.)
    let b0 = box_cpu();
    thread::sleep(Duration::from_secs(1));
    let busy = box_busy_pct(b0, box_cpu());
    if busy > 15.0 {
        eprintln!("[{name}] WARNING: the box is already {busy:.0} % of one core busy before any load; figures will be noisy");
    }
    tr.note
        .push_str(&format!("; box busy before load: {busy:.0} % of one core"));
    eprintln!(
        "[{name}] {} — listening on {}, measuring pid(s) {:?}",
        dep.note(),
        dep.nodes
            .iter()
            .map(|n| n.addr.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        dep.procs().iter().map(|p| p.1).collect::<Vec<_>>()
    );
    for round in 1..=a.rounds.max(1) {
        if a.rounds > 1 {
            eprintln!("[{name}] round {round} of {}", a.rounds);
        }
        if !run_round(&mut dep, &mut tr, a, srcs, round) {
            break;
        }
    }
    tr.exit = dep.stop();
    eprintln!("[{name}] server: {}", tr.exit);
    tr
}

/// The scenarios of one round; false when the server is gone and the rest is skipped.
fn run_round(
    dep: &mut Deployment,
    tr: &mut TargetResult,
    a: &Args,
    srcs: &mut SrcAlloc,
    round: usize,
) -> bool {
    let (kind, mode, transport) = (tr.kind, tr.mode, tr.transport);
    let name = label(kind, mode, transport, a) + tr.pass.tag();
    let base = base_name(kind, mode);
    if a.scenario != ScenarioSel::Fanout && !interrupted() {
        match idle::run_idle(dep, a, transport, srcs, round) {
            Ok(r) => {
                print_idle(base, transport, &r);
                emit_json(&idle_json(kind, mode, transport, &r), a);
                tr.idle.push(r);
            }
            Err(e) => {
                eprintln!("[{name}] idle failed: {e}");
                tr.errors.push(format!("idle: {e}"));
                if let Err(e) = dep.check_alive() {
                    tr.errors.push(format!("remaining scenarios skipped: {e}"));
                    return false;
                }
            }
        }
        thread::sleep(Duration::from_secs(1));
    }
    if a.scenario == ScenarioSel::Idle || dep.check_alive().is_err() {
        return true;
    }
    for sr in fanout_plan(a) {
        if interrupted() {
            break;
        }
        match fanout::run_fanout(dep, a, transport, srcs, sr, round, tr.pass) {
            Ok(mut r) => {
                print_fanout(base, transport, &r);
                emit_json(&fanout_json(kind, mode, transport, &r), a);
                if a.floor {
                    r.floor = floor::after_fanout(a, &r);
                }
                if let Some((at, kib)) = r.attack.as_ref().and_then(|f| f.guard) {
                    tr.errors.push(format!(
                        "fanout {}×{}/s: attack stopped at {at:.1} s, server RSS {kib} KiB passed --attacker-rss-cap-mib {}",
                        sr.subs, sr.rate, a.attacker_rss_cap_mib
                    ));
                }
                tr.fanout.push(r);
            }
            Err(e) => {
                let what = format!("fanout {}×{}/s", sr.subs, sr.rate);
                eprintln!("[{name}] {what} failed: {e}");
                tr.errors.push(format!("{what}: {e}"));
                if dep.check_alive().is_err() {
                    break;
                }
            }
        }
        thread::sleep(Duration::from_secs(1));
    }
    true
}

/// The tables, then per server its note, how it ended, and its errors; false when an
/// `--attacker compare` check failed.
fn print_summary(results: &[TargetResult], a: &Args) -> bool {
    println!("{}", comparison_table(results, a));
    if a.rounds > 1 {
        println!("{}", rounds_table(results, a));
    }
    let mut checks_ok = true;
    if a.attacker == AttackerSel::Compare {
        let (table, ok) = attack_comparisons(results, a);
        println!("{table}");
        checks_ok = ok;
    }
    for r in results {
        let name = label(r.kind, r.mode, r.transport, a) + r.pass.tag();
        println!(
            "{name}: {}; {}",
            r.note,
            if r.exit.is_empty() { "-" } else { &r.exit }
        );
        for e in &r.errors {
            println!("{name} ERROR {e}");
        }
    }
    checks_ok
}

fn main() {
    let args = Args::parse();
    install_signal_handlers();
    let code = match run(&args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("load: {e}");
            2
        }
    };
    std::process::exit(code);
}
