//! CPU over the measured window, from `/proc`: Δ(utime + stime) of each process, and of a
//! redix node's threads grouped by name (`redix-reactor-*`, `redix-redis-com`mand, the rest),
//! so the reading can tell a busy reactor from a command thread that mostly waits on Redis;
//! and from every thread's `schedstat` the times it was put on a CPU (≈ wakeups) and the time
//! it spent runnable but waiting for one.

use std::collections::BTreeMap;
use std::fs;

use crate::support::proc::{clk_tck, cpu_ticks};

/// Ticks per process, and per thread group of each process.
#[derive(Clone, Default)]
pub struct Sample {
    pub procs: BTreeMap<i32, u64>,
    pub groups: BTreeMap<(i32, &'static str), u64>,
    /// per process, all threads: (ns waiting on a run queue, times scheduled on a CPU)
    pub sched: BTreeMap<i32, (u64, u64)>,
}

/// The thread group a redix thread's name falls in.
fn group(comm: &str) -> &'static str {
    if comm.starts_with("redix-reactor") {
        "reactor"
    } else if comm.starts_with("redix-redis-com") {
        "command"
    } else {
        "other"
    }
}

/// (ns waiting on a run queue, times scheduled on a CPU) of every thread of `pid`, summed
/// (`/proc/PID/task/TID/schedstat`: run ns, wait ns, timeslices).
fn sched(pid: i32) -> (u64, u64) {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    let mut sum = (0, 0);
    for e in dir.filter_map(Result::ok) {
        let s = fs::read_to_string(e.path().join("schedstat")).unwrap_or_default();
        let f: Vec<u64> = s
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if let [_, wait, slices] = f[..] {
            sum = (sum.0 + wait, sum.1 + slices);
        }
    }
    sum
}

/// (name, utime + stime) of every thread of `pid`.
fn threads(pid: i32) -> Vec<(String, u64)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.filter_map(Result::ok) {
        let Ok(s) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (s.find('('), s.rfind(')')) else {
            continue;
        };
        let comm = s[open + 1..close].to_owned();
        let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 (index 11 and 12 after the comm).
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.push((comm, ticks(11) + ticks(12)));
    }
    out
}

/// Samples the processes `pids`; thread groups only for `nodes` (redix).
pub fn sample(pids: &[i32], nodes: &[i32]) -> Sample {
    let mut s = Sample::default();
    for &p in pids {
        s.procs.insert(p, cpu_ticks(p).unwrap_or(0));
        s.sched.insert(p, sched(p));
    }
    for &p in nodes {
        for (comm, t) in threads(p) {
            *s.groups.entry((p, group(&comm))).or_default() += t;
        }
    }
    s
}

/// % of one core used by `pid` between two samples `secs` apart.
pub fn pct(a: &Sample, b: &Sample, pid: i32, secs: f64) -> f64 {
    let get = |s: &Sample| s.procs.get(&pid).copied().unwrap_or(0);
    get(b).saturating_sub(get(a)) as f64 / clk_tck() / secs * 100.0
}

/// % of one core used by one thread group of `pid`.
pub fn group_pct(a: &Sample, b: &Sample, pid: i32, g: &'static str, secs: f64) -> f64 {
    let get = |s: &Sample| s.groups.get(&(pid, g)).copied().unwrap_or(0);
    get(b).saturating_sub(get(a)) as f64 / clk_tck() / secs * 100.0
}

/// Over `pids` between two samples: (times scheduled on a CPU, µs runnable but waiting for
/// one), summed.
pub fn sched_delta(a: &Sample, b: &Sample, pids: &[i32]) -> (u64, f64) {
    let get = |s: &Sample, p| s.sched.get(p).copied().unwrap_or((0, 0));
    pids.iter().fold((0, 0.0), |acc, p| {
        let (w0, n0) = get(a, p);
        let (w1, n1) = get(b, p);
        (
            acc.0 + n1.saturating_sub(n0),
            acc.1 + w1.saturating_sub(w0) as f64 / 1e3,
        )
    })
}
