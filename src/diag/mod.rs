//! File-descriptor diagnostics: what the kernel says the process holds,
//! against what redix believes it owns.

mod census;
pub mod tcp;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;

pub use census::{Peers, MAX_UNOWNED_LISTED};

/// One open fd and what `/proc/self/fd/<fd>` links to (`socket:[inode]`,
/// `anon_inode:[eventpoll]`, `pipe:[…]`, a path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fd {
    pub fd: i32,
    pub target: String,
}

/// The open fds of this process, by number.
pub fn list_fds() -> Vec<Fd> {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut out: Vec<Fd> = dir
        .flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse().ok()?;
            // Closed between listing and reading: gone, not counted.
            let target = fs::read_link(entry.path()).ok()?;
            let target = target.to_string_lossy().into_owned();
            Some(Fd { fd, target })
        })
        .collect();
    out.sort_by_key(|f| f.fd);
    out
}

/// The kind of an fd by its link target: `socket`, `eventpoll`,
/// `eventfd`, `pipe`, `device` or `file`.
pub fn kind_of(target: &str) -> String {
    if target.starts_with("socket:[") {
        "socket".into()
    } else if let Some(anon) = target.strip_prefix("anon_inode:") {
        anon.trim_matches(|c| c == '[' || c == ']').into()
    } else if target.starts_with("pipe:") {
        "pipe".into()
    } else if target.starts_with("/dev/") {
        "device".into()
    } else {
        "file".into()
    }
}

/// The inode of a socket fd's target, `socket:[inode]`.
pub fn socket_inode(target: &str) -> Option<u64> {
    target
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Open fds of this process by kind, and the inodes of its sockets.
pub fn fds_by_kind(fds: &[Fd]) -> (BTreeMap<String, u64>, Vec<u64>) {
    let mut kinds = BTreeMap::new();
    for f in fds {
        *kinds.entry(kind_of(&f.target)).or_insert(0) += 1;
    }
    let inodes = fds.iter().filter_map(|f| socket_inode(&f.target)).collect();
    (kinds, inodes)
}

/// How many open fds the process has (cheap: one directory listing).
pub fn open_fd_count() -> u64 {
    fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// TCP states of the given socket inodes (`not_tcp` for other sockets).
pub fn tcp_states(
    inodes: &[u64],
    table: &std::collections::HashMap<u64, tcp::TcpSocket>,
) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    for inode in inodes {
        let name = table.get(inode).map_or("not_tcp", |s| s.state);
        *out.entry(name).or_insert(0) += 1;
    }
    out
}

/// The test hook behind `POST /debug/leak-fd` (`debug.test_hooks`, debug
/// builds only): opens a TCP listener on a free loopback port that no
/// reactor registers and nothing will close, so a test can watch
/// `/debug/fds` name it as unowned. Returns its fd, inode and address.
pub fn leak_test_socket() -> io::Result<(i32, Option<u64>, SocketAddr)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let fd = listener.into_raw_fd();
    let target = fs::read_link(format!("/proc/self/fd/{fd}"))?;
    Ok((fd, socket_inode(&target.to_string_lossy()), addr))
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

/// The `/debug/fds` report as JSON: the kernel's fds by kind and TCP
/// state, what redix believes it owns (counts) and how far the two
/// differ, then the census (fds and TCP states per owner, and the fds no
/// owner accounts for, named).
pub fn report(owned: Owned, baseline: &[Fd], peers: &Peers) -> serde_json::Value {
    // Registrations read before and after the listing: a connection
    // accepted or closed meanwhile (registered right after accept(2),
    // deregistered right before close(2)) is in one or the other.
    let mut registered = census::registered_fds(baseline);
    let fds = list_fds();
    registered.extend(census::registered_fds(&fds));
    let table = tcp::table();
    let (kinds, inodes) = fds_by_kind(&fds);
    let states = tcp_states(&inodes, &table);
    let believed = owned.connections
        + owned.listeners
        + owned.internal
        + owned.redis
        + owned.market
        + owned.jobs;
    let census = census::take(&fds, &registered, baseline, &table, peers);
    let mut out = serde_json::json!({
        "open": fds.len(),
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
        "unaccounted": fds.len() as i64 - believed as i64,
    });
    if let (Some(out), serde_json::Value::Object(more)) = (out.as_object_mut(), census.to_json()) {
        out.extend(more);
    }
    out
}

/// The port of a `scheme://[user@]host[:port][/…]` URL, or `default`.
pub fn url_port(url: &str, default: u16) -> Option<u16> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once("]:").map(|(_, p)| p),
        None => host_port.split_once(':').map(|(_, p)| p),
    };
    match port {
        Some(p) => p.parse().ok(),
        None => Some(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_its_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fds = list_fds();
        let (kinds, inodes) = fds_by_kind(&fds);
        assert!(!fds.is_empty() && kinds.get("socket").copied().unwrap_or(0) >= 1);
        let states = tcp_states(&inodes, &tcp::table());
        assert!(
            states.get("LISTEN").copied().unwrap_or(0) >= 1,
            "{states:?}"
        );
        drop(l);
    }

    #[test]
    fn a_leaked_socket_is_named_unowned() {
        let baseline = list_fds();
        let (fd, inode, addr) = leak_test_socket().unwrap();
        let report = report(
            Owned {
                connections: 0,
                listeners: 0,
                internal: 0,
                redis: 0,
                market: 0,
                jobs: 0,
            },
            &baseline,
            &Peers::default(),
        );
        let named = report["unowned"].as_array().unwrap();
        let it = named.iter().find(|u| u["fd"] == fd).expect("listed");
        assert_eq!(it["inode"].as_u64(), inode);
        assert_eq!(it["tcp_state"], "LISTEN");
        assert_eq!(it["local"], addr.to_string());
        // SAFETY: the fd was leaked above and nothing else holds it.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn ports_of_urls() {
        let table = [
            ("redis://127.0.0.1:6380/0", 6379, Some(6380)),
            ("redis://user:pw@host", 6379, Some(6379)),
            ("wss://ws.finnhub.io?token=x", 443, Some(443)),
            ("ws://[::1]:9001/feed", 80, Some(9001)),
            ("ws://h:notaport", 80, None),
        ];
        for (url, default, want) in table {
            assert_eq!(url_port(url, default), want, "{url}");
        }
    }
}
