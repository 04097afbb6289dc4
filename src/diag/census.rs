//! Who owns each open fd, as far as the kernel can tell us, so that a
//! leaked descriptor is named rather than only counted.
//!
//! Each fd gets the first owner that fits:
//! - `listeners` / `connections`: registered in a reactor's epoll (read
//!   from `/proc/self/fdinfo/<epoll fd>`), a TCP socket in `LISTEN`, or
//!   any other socket. Every client socket is registered for its whole
//!   life, so one that is not is not a live connection.
//! - `internal`: open at start-up with the same target (polls, wakers,
//!   signal pipe, stdio, log files), a non-socket registered in an epoll
//!   (a waker), or a `/proc/…/fd` listing in progress (this census, the
//!   once-a-second sampler).
//! - `redis`: a TCP socket whose remote port is Redis's (the bridge's two
//!   connections, the job engine's two, and the market lease's).
//! - `market`: a TCP socket to the market upstream's port, or either end
//!   of the built-in simulator's (its listener, its side of each feed).
//! - `unowned`: anything else, listed (fd, type, target, inode, TCP state
//!   and addresses), up to [`MAX_UNOWNED_LISTED`].
//!
//! The redis and market owners go by port, not by fd, as those threads
//! keep their sockets to themselves; a stray socket to the same port
//! would pass as theirs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;

use serde_json::{json, Value};

use super::tcp::TcpSocket;
use super::{kind_of, socket_inode, Fd};

/// Unowned fds named in one report; the count is always exact.
pub const MAX_UNOWNED_LISTED: usize = 100;

/// The ports that mark sockets of the threads other than the reactors.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// Redis mode: the master's port and the sentinels'.
    pub redis_ports: Vec<u16>,
    /// The market upstream's port and the built-in simulator's.
    pub market_ports: Vec<u16>,
}

/// The census: fds and TCP states per owner, and the unowned fds.
#[derive(Debug, Default)]
pub struct Census {
    pub fds: BTreeMap<&'static str, u64>,
    pub tcp: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    pub unowned: Vec<Value>,
    pub unowned_total: u64,
}

impl Census {
    pub fn to_json(&self) -> Value {
        json!({
            "fds_by_owner": self.fds,
            "tcp_by_owner": self.tcp,
            "unowned_total": self.unowned_total,
            "unowned": self.unowned,
        })
    }
}

/// Classifies `fds` (the process's open fds) against the epoll
/// registrations, the start-up `baseline` and the TCP table.
pub fn take(
    fds: &[Fd],
    registered: &HashSet<i32>,
    baseline: &[Fd],
    tcp: &HashMap<u64, TcpSocket>,
    peers: &Peers,
) -> Census {
    let baseline: HashSet<(i32, &str)> = baseline.iter().map(|f| (f.fd, &*f.target)).collect();
    let mut census = Census::default();
    for f in fds {
        let socket = socket_inode(&f.target).and_then(|inode| tcp.get(&inode));
        let owner = owner_of(f, socket, registered, &baseline, peers);
        *census.fds.entry(owner).or_insert(0) += 1;
        if let Some(s) = socket {
            *census
                .tcp
                .entry(owner)
                .or_default()
                .entry(s.state)
                .or_insert(0) += 1;
        }
        if owner == "unowned" {
            census.unowned_total += 1;
            if census.unowned.len() < MAX_UNOWNED_LISTED {
                census.unowned.push(describe(f, socket));
            }
        }
    }
    census
}

fn owner_of(
    f: &Fd,
    socket: Option<&TcpSocket>,
    registered: &HashSet<i32>,
    baseline: &HashSet<(i32, &str)>,
    peers: &Peers,
) -> &'static str {
    let is_socket = socket_inode(&f.target).is_some();
    if registered.contains(&f.fd) {
        return match socket {
            Some(s) if s.state == "LISTEN" => "listeners",
            _ if is_socket => "connections",
            _ => "internal",
        };
    }
    if baseline.contains(&(f.fd, &*f.target)) || is_fd_listing(&f.target) {
        return "internal";
    }
    if let Some(s) = socket {
        let (local, remote) = (s.local.port(), s.remote.port());
        if peers.redis_ports.contains(&remote) {
            return "redis";
        }
        if peers
            .market_ports
            .iter()
            .any(|&p| p == remote || p == local)
        {
            return "market";
        }
    }
    "unowned"
}

/// A `/proc/<pid>/fd` directory being read (by this census or by the
/// sampler): it exists only while it is read.
fn is_fd_listing(target: &str) -> bool {
    target.starts_with("/proc/") && target.ends_with("/fd")
}

/// Fds registered in the epoll instances among `fds`. Only reactors use
/// epoll (the other threads block on their own sockets), so these are
/// the reactors' listeners, wakers and connections.
pub fn registered_fds(fds: &[Fd]) -> HashSet<i32> {
    let mut out = HashSet::new();
    for f in fds.iter().filter(|f| f.target == "anon_inode:[eventpoll]") {
        let Ok(info) = fs::read_to_string(format!("/proc/self/fdinfo/{}", f.fd)) else {
            continue;
        };
        out.extend(parse_epoll_targets(&info));
    }
    out
}

/// The `tfd:` (target fd) of each line of an epoll's fdinfo.
fn parse_epoll_targets(info: &str) -> impl Iterator<Item = i32> + '_ {
    info.lines().filter_map(|line| {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("tfd:") => words.next()?.parse().ok(),
            _ => None,
        }
    })
}

fn describe(f: &Fd, socket: Option<&TcpSocket>) -> Value {
    json!({
        "fd": f.fd,
        "type": kind_of(&f.target),
        "target": f.target,
        "inode": socket_inode(&f.target),
        "tcp_state": socket.map(|s| s.state),
        "local": socket.map(|s| s.local.to_string()),
        "remote": socket.map(|s| s.remote.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(fd: i32, target: &str) -> Fd {
        Fd {
            fd,
            target: target.into(),
        }
    }

    fn tcp(state: &'static str, local: &str, remote: &str) -> TcpSocket {
        TcpSocket {
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
        }
    }

    #[test]
    fn reads_the_targets_of_an_epoll() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
            tfd:        7 events:       19 data:                7  pos:0 ino:2e1f sdev:8\n\
            tfd:       12 events: 8000001d data: fffffffffffffffe  pos:0 ino:2e2a sdev:8\n";
        let got: Vec<i32> = parse_epoll_targets(info).collect();
        assert_eq!(got, [7, 12]);
    }

    #[test]
    fn owners_by_registration_start_up_and_port() {
        let baseline = [fd(0, "/dev/null"), fd(3, "anon_inode:[eventpoll]")];
        let registered: HashSet<i32> = [10, 11, 4].into_iter().collect();
        let base: HashSet<(i32, &str)> = baseline.iter().map(|f| (f.fd, &*f.target)).collect();
        let peers = Peers {
            redis_ports: vec![6379],
            market_ports: vec![9000],
        };
        let listen = tcp("LISTEN", "127.0.0.1:4000", "0.0.0.0:0");
        let client = tcp("ESTABLISHED", "127.0.0.1:4000", "127.0.0.1:5555");
        let redis = tcp("ESTABLISHED", "127.0.0.1:4444", "127.0.0.1:6379");
        let sim = tcp("ESTABLISHED", "127.0.0.1:9000", "127.0.0.1:4445");
        let stray = tcp("LISTEN", "127.0.0.1:7777", "0.0.0.0:0");
        let table: &[(Fd, Option<&TcpSocket>, &str)] = &[
            (fd(0, "/dev/null"), None, "internal"),
            (fd(0, "/tmp/reused"), None, "unowned"),
            (fd(4, "anon_inode:[eventfd]"), None, "internal"),
            (fd(10, "socket:[1]"), Some(&listen), "listeners"),
            (fd(11, "socket:[2]"), Some(&client), "connections"),
            (fd(12, "socket:[3]"), Some(&redis), "redis"),
            (fd(13, "socket:[4]"), Some(&sim), "market"),
            (fd(14, "socket:[5]"), Some(&stray), "unowned"),
            (fd(15, "/proc/99/fd"), None, "internal"),
        ];
        for (f, socket, want) in table {
            let got = owner_of(f, *socket, &registered, &base, &peers);
            assert_eq!(got, *want, "{f:?}");
        }
    }
}
