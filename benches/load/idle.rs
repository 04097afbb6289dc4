//! The idle scenario: N connections to one channel on the first node; the server's RSS per
//! idle connection (VmRSS settled after − before, / ready) and the connection setup rate.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::{Args, Transport};
use crate::deployment::Deployment;
use crate::hist::Histogram;
use crate::output::label;
use crate::support::proc::{clk_tck, cpu_ticks, rss_kib};
use crate::support::spawn::interrupted;
use crate::worker::{ConnSet, SrcAlloc};
use crate::Res;

/// (VmRSS, seconds waited, stable?) once 5 samples over 2 s are within 64 KiB, or at `timeout`.
pub fn wait_rss_stable(pid: i32, timeout: Duration) -> Res<(u64, f64, bool)> {
    let t0 = Instant::now();
    let mut window: VecDeque<u64> = VecDeque::new();
    loop {
        let r = rss_kib(pid)?;
        window.push_back(r);
        if window.len() > 5 {
            window.pop_front();
        }
        // stable: 5 samples over 2 s within 64 KiB of each other
        if window.len() == 5 {
            let (lo, hi) = (window.iter().min().unwrap(), window.iter().max().unwrap());
            if hi - lo <= 64 {
                return Ok((r, t0.elapsed().as_secs_f64(), true));
            }
        }
        if t0.elapsed() > timeout || interrupted() {
            return Ok((r, t0.elapsed().as_secs_f64(), false));
        }
        thread::sleep(Duration::from_millis(500));
    }
}

pub struct IdleResult {
    pub round: usize,
    pub conns: usize,
    pub ready: usize,
    pub failed: usize,
    pub dropped: usize,
    pub retries: usize,
    pub setup_s: f64,
    pub handshakes_per_s: f64,
    pub rss_before: u64,
    pub rss_after: u64,
    pub settle_s: f64,
    pub settled: bool,
    pub per_conn_bytes: f64,
    pub rss_closed: u64,
    pub server_cpu_setup_ms: f64,
    pub loadgen_cpu_setup_pct: f64,
    pub setup_hist: Histogram,
    pub concurrency: usize,
    pub first_err: Option<String>,
}

/// Against the first node only (in Redis mode too: an idle connection does not involve Redis).
pub fn run_idle(
    dep: &mut Deployment,
    a: &Args,
    tr: Transport,
    srcs: &mut SrcAlloc,
    round: usize,
) -> Res<IdleResult> {
    let deadline = Instant::now() + Duration::from_secs_f64(a.deadline);
    let n = a.conns;
    let pid = dep.primary().pid;
    let name = label(dep.kind, dep.mode, tr, a);
    eprintln!("[{name}] idle: opening {n} {} connections…", tr.long());
    let (rss_before, _, _) = wait_rss_stable(pid, Duration::from_secs(5))?;
    let self_pid = std::process::id() as i32;
    let (cpu0, self0, w0) = (cpu_ticks(pid)?, cpu_ticks(self_pid)?, Instant::now());
    let set = ConnSet::start(&dep.nodes[..1], a, tr, n, srcs)?;
    set.wait_ready(dep, deadline)?;
    let (cpu1, self1, wall) = (
        cpu_ticks(pid)?,
        cpu_ticks(self_pid)?,
        w0.elapsed().as_secs_f64(),
    );
    let tck = clk_tck();
    let sh = set.sh.clone();
    let ready = sh.ready.load(Relaxed);
    let failed = sh.failed.load(Relaxed);
    let setup_s = sh.last_ready_ns.load(Relaxed) as f64 / 1e9;
    eprintln!(
        "[{name}] idle: {ready} ready, {failed} failed in {setup_s:.3} s; waiting for RSS to settle…"
    );
    let settle = Duration::from_secs_f64(a.settle_timeout)
        .min(deadline.saturating_duration_since(Instant::now()));
    let (rss_after, settle_s, settled) = wait_rss_stable(pid, settle)?;
    dep.check_alive()?;
    let dropped = sh.dropped.load(Relaxed);
    let retries = sh.retries.load(Relaxed);
    let first_err = set.first_err();
    let setup = set.finish().setup;
    let settle = Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now()));
    let (rss_closed, _, _) = wait_rss_stable(pid, settle)?;
    dep.check_alive()?;
    if ready == 0 {
        return Err(format!(
            "no connection became ready: {}",
            first_err.unwrap_or_default()
        ));
    }
    Ok(IdleResult {
        round,
        conns: n,
        ready,
        failed,
        dropped,
        retries,
        setup_s,
        handshakes_per_s: if setup_s > 0.0 {
            ready as f64 / setup_s
        } else {
            0.0
        },
        rss_before,
        rss_after,
        settle_s,
        settled,
        per_conn_bytes: (rss_after as f64 - rss_before as f64) * 1024.0 / ready as f64,
        rss_closed,
        server_cpu_setup_ms: (cpu1 - cpu0) as f64 * 1000.0 / tck,
        loadgen_cpu_setup_pct: (self1 - self0) as f64 / tck / wall * 100.0,
        setup_hist: setup,
        concurrency: a.connect_concurrency,
        first_err,
    })
}
