//! `--scenario jobs` (redix in embedded mode only, not part of `all`): the job acceptance
//! measurement, against redix with no worker (`jobs.demo_worker=false`) and the breaker held
//! closed for the run (`jobs.progress_ms` one day, `jobs.max_pending` and `jobs.max_jobs` ten
//! million); a per-IP job limit (`limits.jobs_per_min`, `limits.job_burst`,
//! `limits.jobs_in_flight`) is raised too when the binary knows the key.
//!
//! 1. Submit: one fresh server; `--jobs-rounds` bursts of `--jobs-clients` concurrent
//!    `POST /api/summarize?wait=0`, then `--jobs-window-rounds` without `?wait=` (the 202
//!    after the quick-check window), a new URL for every request (`jobs_submit`).
//! 2. Parked requests beside fan-out: per transport and fanout run, a fresh server without,
//!    then a fresh server with `--jobs-clients` requests parked (`jobs_park`, through
//!    `fanout`'s `Pass::Parked`); the two side by side, their ratio and the checks
//!    (`jobs_figs`, `jobs_park_figs`).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::{fanout_plan, Args, Mode, ModeSel, Pass, TargetSel, Transport};
use crate::deployment::Deployment;
use crate::fanout::{run_fanout, FanoutResult};
use crate::jobs_figs::{
    burst_json, burst_text, check_table, submit_checks, BurstFigs, JobsMetrics, DEFAULT_WINDOW_MS,
};
use crate::jobs_park_figs::{compare_table, FanSide};
use crate::jobs_submit::{run_burst, BurstCfg};
use crate::market::prom_counter;
use crate::now_ns;
use crate::output::{emit_json, fanout_json, label, print_fanout};
use crate::runs;
use crate::server::Kind;
use crate::support::proc::{box_busy_pct, box_cpu, clk_tck, cpu_ticks};
use crate::support::spawn::interrupted;
use crate::worker::SrcAlloc;
use crate::Res;

/// No worker, and a breaker that stays closed for any run of this bench.
const JOB_SETTINGS: [&str; 4] = [
    "jobs.demo_worker=false",
    "jobs.progress_ms=86400000",
    "jobs.max_pending=10000000",
    "jobs.max_jobs=10000000",
];
/// Per-IP job limits a redix may have; raised to this when it knows them.
const LIMIT_KEYS: [&str; 3] = [
    "limits.jobs_per_min",
    "limits.job_burst",
    "limits.jobs_in_flight",
];
const LIMIT_VALUE: &str = "1000000";
/// Most `--jobs-clients` (sockets, source addresses).
pub const MAX_CLIENTS: usize = 5_000;

/// Refuses what the scenario cannot do.
pub fn check_args(a: &Args) -> Res<()> {
    if a.target == TargetSel::Nchan || a.mode != ModeSel::Embedded {
        return Err("--scenario jobs runs redix in embedded mode only".into());
    }
    if !(1..=MAX_CLIENTS).contains(&a.jobs_clients) {
        return Err(format!("--jobs-clients must be 1..={MAX_CLIENTS}"));
    }
    // ≥ 1 s keeps the parked requests a bounded load (at most --jobs-clients per second)
    if !(1..=10).contains(&a.jobs_park_wait) || a.jobs_rounds == 0 {
        return Err("--jobs-park-wait is 1..=10 s (`jobs.max_wait_ms`), --jobs-rounds ≥ 1".into());
    }
    Ok(())
}

/// What `redix --set KV` makes of a key, from a dry parse.
#[derive(Debug, PartialEq, Eq)]
enum KeyProbe {
    Known,
    Unknown,
    /// the key exists but the value is refused (the message)
    Refused(String),
}

/// `redix --set KV publish …` parses and validates the configuration, then (no Redis given)
/// stops: an unknown key fails the parse with "unknown field", a bad value the validation.
fn probe_key(bin: &Path, kv: &str) -> KeyProbe {
    let mut cmd = Command::new(bin);
    cmd.args(["--set", kv, "publish", "jobs-bench-probe", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("REDIX_")) {
        cmd.env_remove(k);
    }
    let Ok(mut child) = cmd.spawn() else {
        return KeyProbe::Unknown;
    };
    let until = Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if err.contains("unknown field") {
        KeyProbe::Unknown
    } else if err.contains("invalid config") || err.contains("config:") {
        KeyProbe::Refused(err.trim().to_string())
    } else {
        KeyProbe::Known
    }
}

/// The bench's arguments with the job settings (and the limits the binary knows) added, and
/// a note saying which were passed.
fn jobs_args(a: &Args) -> (Args, String) {
    let mut a2 = a.clone();
    let mut set: Vec<String> = JOB_SETTINGS.iter().map(|s| s.to_string()).collect();
    let mut skipped = Vec::new();
    for key in LIMIT_KEYS {
        let kv = format!("{key}={LIMIT_VALUE}");
        match probe_key(&a.redix_bin, &kv) {
            KeyProbe::Known => set.push(kv),
            KeyProbe::Unknown => skipped.push(format!("{key} (unknown to this binary)")),
            KeyProbe::Refused(e) => skipped.push(format!("{key} (refused: {e})")),
        }
    }
    for kv in &set {
        a2.redix_args.push("--set".into());
        a2.redix_args.push(kv.clone());
    }
    let mut note = format!("redix with --set {}", set.join(" --set "));
    if !skipped.is_empty() {
        let _ = write!(note, "; not set: {}", skipped.join(", "));
    }
    (a2, note)
}

/// The quick-check window: `jobs.wait_ms` if the run sets it, else redix's default.
fn window_ms(a: &Args) -> u64 {
    a.redix_args
        .iter()
        .filter_map(|s| s.strip_prefix("jobs.wait_ms="))
        .filter_map(|v| v.trim().parse().ok())
        .next_back()
        .unwrap_or(DEFAULT_WINDOW_MS)
}

/// The job engine's metrics now.
fn jobs_metrics(dep: &Deployment) -> Option<JobsMetrics> {
    Some(JobsMetrics {
        pending: prom_counter(dep, "redix_jobs_pending")?,
        submitted: prom_counter(dep, "redix_jobs_submitted_total")?,
        breaker_opened: prom_counter(dep, "redix_jobs_breaker_opened_total")?,
        refused: prom_counter(dep, "redix_jobs_refused_total")?,
    })
}

/// The box's CPU over one second before any load, in % of one core (the figures assume ~0).
fn busy_before(name: &str) -> f64 {
    let b0 = box_cpu();
    thread::sleep(Duration::from_secs(1));
    let busy = box_busy_pct(b0, box_cpu());
    if busy > 15.0 {
        eprintln!("[{name}] WARNING: the box is already {busy:.0} % of one core busy before any load; figures will be noisy");
    }
    busy
}

/// Everything the scenario printed at the end, and whether it all passed.
struct Summary {
    tables: String,
    notes: Vec<String>,
    ok: bool,
}

impl Summary {
    fn error(&mut self, name: &str, e: String) {
        eprintln!("[{name}] {e}");
        self.notes.push(format!("{name} ERROR {e}"));
        self.ok = false;
    }
}

/// The whole scenario; true when every check passed and nothing failed.
pub fn run_jobs_all(a: &Args, srcs: &mut SrcAlloc) -> Res<bool> {
    check_args(a)?;
    let (a2, settings) = jobs_args(a);
    eprintln!("[jobs] {settings}");
    let mut sum = Summary {
        tables: String::new(),
        notes: vec![format!("jobs: {settings}")],
        ok: true,
    };
    submit_phase(&a2, srcs, &mut sum);
    for (_, tr, _) in runs(a).into_iter().filter(|r| r.0 == Kind::Redix) {
        if interrupted() {
            break;
        }
        parked_phase(&a2, tr, srcs, &mut sum);
    }
    print!("{}", sum.tables);
    println!();
    for n in &sum.notes {
        println!("{n}");
    }
    if interrupted() {
        return Err("interrupted".into());
    }
    Ok(sum.ok)
}

/// Part 1: the bursts against one fresh server; their blocks, JSON lines and checks.
fn submit_phase(a: &Args, srcs: &mut SrcAlloc, sum: &mut Summary) {
    let name = "redix jobs submit";
    let mut dep = match Deployment::start(Kind::Redix, Mode::Embedded, a, Transport::Sse) {
        Ok(d) => d,
        Err(e) => return sum.error(name, format!("cannot start: {e}")),
    };
    let busy = busy_before(name);
    let r = bursts(&dep, a, srcs);
    let ended = dep.stop();
    sum.notes.push(format!(
        "{name}: {}; box busy before load: {busy:.0} % of one core; {ended}",
        dep.note()
    ));
    let figs = match r {
        Ok(f) => f,
        Err(e) => return sum.error(name, e),
    };
    for f in &figs {
        print!("{}", burst_text("redix", f, window_ms(a)));
        emit_json(&burst_json(f), a);
    }
    let cs = submit_checks(&figs[0], figs.get(1), window_ms(a));
    sum.ok &= cs.iter().all(|c| c.pass);
    let _ = write!(
        sum.tables,
        "\nredix jobs submit: {} concurrent POST /api/summarize, no worker{}",
        a.jobs_clients,
        check_table(&cs)
    );
}

/// The `?wait=0` rounds, then the window rounds (when asked for).
fn bursts(dep: &Deployment, a: &Args, srcs: &mut SrcAlloc) -> Res<Vec<BurstFigs>> {
    let clients: Vec<_> = (0..a.jobs_clients).map(|_| srcs.take()).collect();
    let pid = dep.primary().pid;
    let mut cfg = BurstCfg {
        addr: dep.primary().addr,
        srcs: &clients,
        wait_s: Some(0),
        window_ms: window_ms(a),
        rounds: a.jobs_rounds,
        tag: format!("submit-{:x}", now_ns()),
        phase: "wait0",
        deadline: Instant::now() + Duration::from_secs_f64(a.deadline),
    };
    let mut out = Vec::new();
    for (wait_s, rounds, phase) in [
        (Some(0), a.jobs_rounds, "wait0"),
        (None, a.jobs_window_rounds, "window"),
    ] {
        if rounds == 0 {
            continue;
        }
        (cfg.wait_s, cfg.rounds, cfg.phase) = (wait_s, rounds, phase);
        eprintln!(
            "[redix jobs submit] {rounds} round(s) of {} concurrent POST /api/summarize{}…",
            a.jobs_clients,
            wait_s.map(|w| format!("?wait={w}")).unwrap_or_default()
        );
        let own = std::process::id() as i32;
        let (t0, g0, b0, w0) = (cpu_ticks(pid)?, cpu_ticks(own)?, box_cpu(), Instant::now());
        let mut f = run_burst(&cfg)?;
        let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 * 1000.0 / clk_tck();
        f.wall_s = w0.elapsed().as_secs_f64();
        f.server_cpu_ms = ms(t0, cpu_ticks(pid)?);
        f.loadgen_cpu_pct = ms(g0, cpu_ticks(own)?) / 10.0 / f.wall_s;
        f.box_busy_pct = box_busy_pct(b0, box_cpu());
        f.server = jobs_metrics(dep);
        out.push(f);
    }
    Ok(out)
}

/// Part 2 for one transport: every fanout run without, then with parked requests, each pass
/// on a fresh server; the comparison tables and checks.
fn parked_phase(a: &Args, tr: Transport, srcs: &mut SrcAlloc, sum: &mut Summary) {
    let base = run_pass(a, tr, Pass::Off, srcs, sum);
    if interrupted() {
        return;
    }
    let with = run_pass(a, tr, Pass::Parked, srcs, sum);
    let name = label(Kind::Redix, Mode::Embedded, tr, a);
    for w in &with {
        let title = format!(
            "{name} fanout {}×{}/s: without vs with {} parked summarize requests (?wait={}, no worker)",
            w.subs, w.rate, a.jobs_clients, a.jobs_park_wait
        );
        let b = base.iter().find(|b| (b.subs, b.rate) == (w.subs, w.rate));
        match (b, &w.parked) {
            (Some(b), Some(park)) => {
                let (t, ok) = compare_table(&title, &fan_side(b), &fan_side(w), park);
                sum.tables.push_str(&t);
                sum.ok &= ok;
            }
            _ => {
                let _ = writeln!(
                    sum.tables,
                    "\n{title}: no run without to compare with — FAIL"
                );
                sum.ok = false;
            }
        }
    }
    if with.is_empty() {
        sum.ok = false;
    }
}

/// One pass: a fresh server, every fanout run of the plan, the server stopped.
fn run_pass(
    a: &Args,
    tr: Transport,
    pass: Pass,
    srcs: &mut SrcAlloc,
    sum: &mut Summary,
) -> Vec<FanoutResult> {
    let name = label(Kind::Redix, Mode::Embedded, tr, a) + pass.tag();
    let mut dep = match Deployment::start(Kind::Redix, Mode::Embedded, a, tr) {
        Ok(d) => d,
        Err(e) => {
            sum.error(&name, format!("cannot start: {e}"));
            return vec![];
        }
    };
    let busy = busy_before(&name);
    let mut out = Vec::new();
    for sr in fanout_plan(a) {
        if interrupted() {
            break;
        }
        match run_fanout(&mut dep, a, tr, srcs, sr, 1, pass) {
            Ok(mut r) => {
                if let Some(p) = r.parked.as_mut() {
                    p.server = jobs_metrics(&dep);
                }
                print_fanout("redix", tr, &r);
                emit_json(&fanout_json(Kind::Redix, Mode::Embedded, tr, &r), a);
                out.push(r);
            }
            Err(e) => sum.error(&name, format!("fanout {}×{}/s: {e}", sr.subs, sr.rate)),
        }
        if dep.check_alive().is_err() {
            break;
        }
        thread::sleep(Duration::from_secs(1));
    }
    let ended = dep.stop();
    sum.notes.push(format!(
        "{name}: {}; box busy before load: {busy:.0} % of one core; {ended}",
        dep.note()
    ));
    out
}

/// The subscriber figures of a fanout run, for the comparison.
fn fan_side(r: &FanoutResult) -> FanSide {
    let p99_all = crate::attack_figs::pct_counting_lost(99.0, r.received, r.expected);
    FanSide {
        p50_us: r.hist.percentile(50.0),
        p99_us: r.hist.percentile(99.0),
        p99_all_us: p99_all.map(|q| r.hist.percentile(q)),
        received: r.received,
        expected: r.expected,
        cpu_per_delivery_us: r.cpu_per_delivery_us,
    }
}
