//! CPU over the measured window, from `/proc`: Δ(utime + stime) of each process, and of a
//! redix node's threads grouped by name (`redix-reactor-*`, `redix-redis-com`mand, the rest),
//! so the reading can tell a busy reactor from a command thread that mostly waits on Redis.

use std::collections::BTreeMap;
use std::fs;

use crate::support::proc::{clk_tck, cpu_ticks};

/// Ticks per process, and per thread group of each process.
#[derive(Clone, Default)]
pub struct Sample {
    pub procs: BTreeMap<i32, u64>,
    pub groups: BTreeMap<(i32, &'static str), u64>,
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
