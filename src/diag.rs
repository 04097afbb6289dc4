//! File-descriptor diagnostics: what the kernel says the process holds,
//! against what redix believes it owns.

use std::collections::{BTreeMap, HashMap};
use std::fs;

/// Open fds of this process by kind (`socket`, `eventpoll`, `eventfd`, `pipe`, `file`, …).
pub fn fds_by_kind() -> (u64, BTreeMap<String, u64>, Vec<u64>) {
    let mut kinds = BTreeMap::new();
    let mut socket_inodes = Vec::new();
    let mut total = 0;
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return (0, kinds, socket_inodes);
    };
    for entry in dir.flatten() {
        let Ok(target) = fs::read_link(entry.path()) else {
            // Closed between listing and reading (e.g. the directory's own fd).
            continue;
        };
        total += 1;
        let target = target.to_string_lossy();
        let kind = if let Some(inode) = target.strip_prefix("socket:[") {
            if let Ok(n) = inode.trim_end_matches(']').parse() {
                socket_inodes.push(n);
            }
            "socket".to_string()
        } else if let Some(anon) = target.strip_prefix("anon_inode:") {
            anon.trim_matches(|c| c == '[' || c == ']').to_string()
        } else if target.starts_with("pipe:") {
            "pipe".to_string()
        } else if target.starts_with("/dev/") {
            "device".to_string()
        } else {
            "file".to_string()
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    (total, kinds, socket_inodes)
}

/// How many open fds the process has (cheap: one directory listing).
pub fn open_fd_count() -> u64 {
    fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

const TCP_STATES: [&str; 12] = [
    "ERROR",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
];

/// TCP states of the given socket inodes, from `/proc/self/net/tcp{,6}`.
pub fn tcp_states(inodes: &[u64]) -> BTreeMap<&'static str, u64> {
    let mut by_inode: HashMap<u64, usize> = HashMap::new();
    for file in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(state), Some(inode)) = (cols.get(3), cols.get(9)) else {
                continue;
            };
            let (Ok(state), Ok(inode)) = (usize::from_str_radix(state, 16), inode.parse::<u64>())
            else {
                continue;
            };
            by_inode.insert(inode, state);
        }
    }
    let mut out = BTreeMap::new();
    for inode in inodes {
        let name = match by_inode.get(inode) {
            Some(&s) => TCP_STATES.get(s).copied().unwrap_or("UNKNOWN"),
            None => "not_tcp",
        };
        *out.entry(name).or_insert(0) += 1;
    }
    out
}

/// What redix believes it owns, for comparison with the kernel's view.
#[derive(Debug, Clone, Copy)]
pub struct Owned {
    pub connections: u64,
    pub listeners: u64,
    /// Everything counted at start-up besides listeners: stdio, polls,
    /// wakers, signal pipes, log files.
    pub internal: u64,
    /// Connections to Redis (Redis mode: up to two).
    pub redis: u64,
    /// The market link: its upstream socket, and the built-in simulator's
    /// listener and connections when it serves the feed.
    pub market: u64,
    /// The job engine's connections to Redis (Redis mode: up to two).
    pub jobs: u64,
}

/// The `/debug/fds` report as JSON.
pub fn report(owned: Owned) -> serde_json::Value {
    let (total, kinds, inodes) = fds_by_kind();
    let states = tcp_states(&inodes);
    let believed = owned.connections
        + owned.listeners
        + owned.internal
        + owned.redis
        + owned.market
        + owned.jobs;
    serde_json::json!({
        "open": total,
        "by_kind": kinds,
        "tcp_states": states,
        "owned": {
            "connections": owned.connections,
            "listeners": owned.listeners,
            "internal": owned.internal,
            "redis": owned.redis,
            "market": owned.market,
            "jobs": owned.jobs,
            "total": believed,
        },
        "unaccounted": total as i64 - believed as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_its_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (total, kinds, inodes) = fds_by_kind();
        assert!(total >= 1 && kinds.get("socket").copied().unwrap_or(0) >= 1);
        let states = tcp_states(&inodes);
        assert!(
            states.get("LISTEN").copied().unwrap_or(0) >= 1,
            "{states:?}"
        );
        drop(l);
    }
}
