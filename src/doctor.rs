//! `redix doctor`: reads this machine's limits and says, for each, whether
//! it caps the configured load and what to change where. The exit status
//! is non-zero when something would cap it.

use std::fmt::Write as _;

use crate::config::Config;
use crate::limits::{connection_cap, FD_RESERVE};

/// Bytes of kernel socket buffer a connection with data in flight is
/// counted for (a few small events queued); idle sockets hold none.
const BUSY_SOCKET_BYTES: u64 = 4096;
/// The load assumed when `limits.max_connections` is 0 and no
/// `--connections` is given: the scale redix is built for.
const DEFAULT_TARGET: usize = 100_000;

/// One check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Worth knowing; does not cap the load.
    Note,
    /// Caps the configured load.
    Fail,
}

/// One line of the report.
#[derive(Debug)]
pub struct Finding {
    pub verdict: Verdict,
    pub what: &'static str,
    pub text: String,
}

/// What the checks read, so they can be tested without this machine.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub nofile: Option<(u64, u64)>,
    pub nr_open: Option<u64>,
    pub file_max: Option<u64>,
    pub somaxconn: Option<u64>,
    pub port_range: Option<(u64, u64)>,
    pub tcp_mem_pages: Option<u64>,
    pub conntrack_max: Option<u64>,
}

impl Facts {
    /// This machine's.
    pub fn read() -> Facts {
        let one = |path: &str| read_u64s(path).and_then(|v| v.first().copied());
        let nofile = crate::limits::raise_nofile_limit().ok();
        Facts {
            nofile,
            nr_open: one("/proc/sys/fs/nr_open"),
            file_max: one("/proc/sys/fs/file-max"),
            somaxconn: one("/proc/sys/net/core/somaxconn"),
            port_range: read_u64s("/proc/sys/net/ipv4/ip_local_port_range")
                .and_then(|v| Some((*v.first()?, *v.get(1)?))),
            tcp_mem_pages: read_u64s("/proc/sys/net/ipv4/tcp_mem").and_then(|v| v.get(2).copied()),
            conntrack_max: one("/proc/sys/net/netfilter/nf_conntrack_max"),
        }
    }
}

fn read_u64s(path: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect(),
    )
}

/// The checks, for `target` connections per process.
pub fn check(config: &Config, facts: &Facts, target: usize) -> Vec<Finding> {
    let mut out = vec![nofile(facts, target)];
    out.extend(system_files(facts, target));
    out.push(backlog(config, facts));
    out.push(ports(facts));
    out.push(tcp_mem(facts, target));
    out.push(conntrack(facts, target));
    out
}

fn finding(verdict: Verdict, what: &'static str, text: String) -> Finding {
    Finding {
        verdict,
        what,
        text,
    }
}

fn nofile(facts: &Facts, target: usize) -> Finding {
    let Some((soft, hard)) = facts.nofile else {
        return finding(
            Verdict::Note,
            "open files",
            "RLIMIT_NOFILE unreadable".into(),
        );
    };
    // redix raises its soft limit to the hard one at start.
    let cap = connection_cap(0, hard);
    let text = format!(
        "RLIMIT_NOFILE soft {soft}, hard {hard}: redix raises the soft limit to {hard} and keeps {FD_RESERVE} for itself, so one process holds at most {cap} connections"
    );
    if cap >= target {
        return finding(Verdict::Ok, "open files", text);
    }
    let processes = target.div_ceil(cap.max(1));
    finding(
        Verdict::Fail,
        "open files",
        format!(
            "{text}, fewer than {target}. Raise the hard limit (LimitNOFILE= in systemd/redix.service, `ulimit -Hn` where you start it; at most fs.nr_open) or run {processes} processes on the port (systemd/redix@.service, Redis mode)"
        ),
    )
}

fn system_files(facts: &Facts, target: usize) -> Vec<Finding> {
    let mut out = Vec::new();
    if let (Some(nr_open), Some((_, hard))) = (facts.nr_open, facts.nofile) {
        let verdict = if nr_open >= hard {
            Verdict::Ok
        } else {
            Verdict::Note
        };
        out.push(finding(
            verdict,
            "fs.nr_open",
            format!("{nr_open}: the most LimitNOFILE can be raised to (sysctl fs.nr_open in systemd/99-redix.conf)"),
        ));
    }
    if let Some(max) = facts.file_max {
        let verdict = if max as usize >= target {
            Verdict::Ok
        } else {
            Verdict::Fail
        };
        out.push(finding(
            verdict,
            "fs.file-max",
            format!("{max} open files system-wide; set fs.file-max in systemd/99-redix.conf above every process's connections together"),
        ));
    }
    out
}

fn backlog(config: &Config, facts: &Facts) -> Finding {
    let want = config.backlog.max(0) as u64;
    let Some(max) = facts.somaxconn else {
        return finding(Verdict::Note, "net.core.somaxconn", "unreadable".into());
    };
    let text = format!("{max}; `backlog` is {want}");
    match max >= want {
        true => finding(Verdict::Ok, "net.core.somaxconn", text),
        false => finding(
            Verdict::Fail,
            "net.core.somaxconn",
            format!("{text}: the kernel cuts the listen backlog to {max}, so a burst of connects (a restart, a reconnect storm) is refused; set net.core.somaxconn >= {want} in systemd/99-redix.conf"),
        ),
    }
}

fn ports(facts: &Facts) -> Finding {
    let Some((lo, hi)) = facts.port_range else {
        return finding(Verdict::Note, "ephemeral ports", "unreadable".into());
    };
    let n = hi.saturating_sub(lo) + 1;
    finding(
        Verdict::Note,
        "ephemeral ports",
        format!("{lo}-{hi} ({n} ports): bounds outgoing connections per source address and destination (redix's own to Redis and the market feed are few; a load generator on this box needs more source addresses, 127.0.0.2…, or net.ipv4.ip_local_port_range = 1024 65535)"),
    )
}

fn tcp_mem(facts: &Facts, target: usize) -> Finding {
    let Some(pages) = facts.tcp_mem_pages else {
        return finding(Verdict::Note, "net.ipv4.tcp_mem", "unreadable".into());
    };
    let bytes = pages * 4096;
    let busy = bytes / BUSY_SOCKET_BYTES;
    let text = format!(
        "max {pages} pages ({} MiB) of socket buffers for all TCP: {busy} connections with {BUSY_SOCKET_BYTES} bytes in flight each",
        bytes >> 20
    );
    match busy as usize >= target {
        true => finding(Verdict::Ok, "net.ipv4.tcp_mem", text),
        false => finding(
            Verdict::Fail,
            "net.ipv4.tcp_mem",
            format!("{text}, fewer than {target}: raise the third value of net.ipv4.tcp_mem in systemd/99-redix.conf"),
        ),
    }
}

fn conntrack(facts: &Facts, target: usize) -> Finding {
    let Some(max) = facts.conntrack_max else {
        return finding(
            Verdict::Ok,
            "nf_conntrack_max",
            "no connection tracking loaded: nothing caps connections there".into(),
        );
    };
    let text = format!("{max} tracked connections");
    match max as usize >= target {
        true => finding(Verdict::Ok, "nf_conntrack_max", text),
        false => finding(
            Verdict::Fail,
            "nf_conntrack_max",
            format!("{text}, fewer than {target}: new connections are dropped when the table is full; set net.netfilter.nf_conntrack_max in systemd/99-redix.conf (or exempt the port from tracking)"),
        ),
    }
}

/// Prints the report for `target` connections (or the configured cap, or
/// 100,000) and returns the exit status: 1 when something caps the load.
pub fn run(config: &Config, target: Option<usize>) -> i32 {
    let target = target
        .or((config.limits.max_connections > 0).then_some(config.limits.max_connections))
        .unwrap_or(DEFAULT_TARGET);
    let findings = check(config, &Facts::read(), target);
    print!("{}", report(&findings, target));
    i32::from(findings.iter().any(|f| f.verdict == Verdict::Fail))
}

pub fn report(findings: &[Finding], target: usize) -> String {
    let mut out =
        format!("redix doctor: can this machine hold {target} connections per process?\n");
    for f in findings {
        let mark = match f.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Note => "note",
            Verdict::Fail => "FAIL",
        };
        let _ = writeln!(out, "{mark} {}: {}", f.what, f.text);
    }
    let fails = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .count();
    let _ = match fails {
        0 => writeln!(out, "nothing here caps {target} connections"),
        n => writeln!(out, "{n} limit(s) cap the load: change them as said above"),
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            nofile: Some((1024, 20_000)),
            nr_open: Some(1_048_576),
            file_max: Some(2_466_165),
            somaxconn: Some(4096),
            port_range: Some((32768, 60999)),
            tcp_mem_pages: Some(575_796),
            conntrack_max: None,
        }
    }

    #[test]
    fn a_20000_fd_hard_limit_caps_100k_and_says_how_many_processes() {
        let config = Config::default();
        let found = check(&config, &facts(), 100_000);
        let fd = &found[0];
        assert_eq!(fd.verdict, Verdict::Fail);
        assert!(fd.text.contains("hard 20000"), "{}", fd.text);
        assert!(fd.text.contains("19872 connections"), "{}", fd.text);
        assert!(fd.text.contains("run 6 processes"), "{}", fd.text);
        assert!(check(&config, &facts(), 10_000)[0].verdict == Verdict::Ok);
    }

    #[test]
    fn a_small_somaxconn_and_conntrack_table_are_named_with_the_fix() {
        let config = Config::default();
        let mut f = facts();
        f.somaxconn = Some(128);
        f.conntrack_max = Some(5_000);
        let found = check(&config, &f, 10_000);
        let text = report(&found, 10_000);
        assert!(text.contains("FAIL net.core.somaxconn: 128"), "{text}");
        assert!(text.contains("FAIL nf_conntrack_max"), "{text}");
        assert!(text.contains("99-redix.conf"), "{text}");
    }
}
