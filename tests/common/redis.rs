//! Real `redis-server`s for Redis mode: one per test on a free port (which
//! the test can kill, restart, pause and resume), redix nodes attached to
//! one, and Redis stream ids.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::http::get;
use super::server::{wait_until, Server};

/// A real `redis-server` on a free port, killed on drop; the tests can
/// kill, restart (same port), pause and resume it.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// Arguments before the port (a config file, `--sentinel`).
    leading: Vec<String>,
    /// Arguments after the defaults (`--replicaof`, …), kept for restarts.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts `redis-server` from PATH without persistence and waits until
    /// it answers PING.
    pub fn start() -> RedisServer {
        Self::start_with(&[], &[])
    }

    /// Starts with `leading` arguments before `--port` and `extra` ones
    /// after the defaults (both kept for restarts).
    pub fn start_with(leading: &[String], extra: &[String]) -> RedisServer {
        for _ in 0..5 {
            let port = port_for(extra);
            let mut r = RedisServer {
                child: None,
                port,
                leading: leading.to_vec(),
                extra: extra.to_vec(),
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not come up on any of 5 free ports");
    }

    /// Starts on a given port (one a node was already told about).
    pub fn start_on(port: u16) -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port,
            leading: Vec::new(),
            extra: Vec::new(),
        };
        assert!(r.spawn(), "redis-server could not take port {port}");
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Spawns on `self.port`; false when it exited (the port was taken).
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        // A directory of its own: a replica's full sync writes dump.rdb
        // there, and a server started later in the same directory would
        // load it (even with `--save ""`).
        let dir = self.dir();
        std::fs::create_dir_all(&dir).expect("redis-server directory");
        let child = Command::new("redis-server")
            .args(&self.leading)
            .args(["--dir", &dir.to_string_lossy()])
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--protected-mode", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (the test command installs it)");
        self.child = Some(child);
        // Answering, or gone (the port was taken: the caller tries another).
        let mut exited = false;
        wait_until(
            &format!("redis-server on port {port} to answer PING"),
            || {
                exited = self
                    .child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                exited || self.ping()
            },
        );
        if exited {
            self.child = None;
        }
        !exited
    }

    /// The server's working directory (removed on drop).
    fn dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("redix-redis-{}-{}", std::process::id(), self.port))
    }

    /// Runs one command (RESP over a fresh connection); the raw reply.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = vec![0; 64 * 1024];
        let n = s.read(&mut buf).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    pub fn ping(&self) -> bool {
        self.command(&["PING"])
            .is_some_and(|r| r.starts_with("+PONG"))
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server could not take port {} again",
            self.port
        );
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// A replica of `master` (`--replicaof`), waited on until the master
    /// counts it online.
    pub fn replica_of(master: &RedisServer) -> RedisServer {
        let port = master.port.to_string();
        let extra = ["--replicaof", "127.0.0.1", &port].map(String::from);
        let before = master.online_replicas();
        let r = Self::start_with(&[], &extra);
        wait_until("the replica to be online", || {
            master.online_replicas() > before
        });
        // The master marks it online once the snapshot is sent; the replica
        // answers acknowledgements (WAIT) only after loading it.
        wait_until("the replica's link up and its sync done", || {
            let info = r.command(&["INFO", "replication"]).unwrap_or_default();
            info.contains("master_link_status:up") && info.contains("master_sync_in_progress:0")
        });
        r
    }

    /// Replicas the master sees online (`INFO replication`).
    pub fn online_replicas(&self) -> usize {
        let info = self.command(&["INFO", "replication"]).unwrap_or_default();
        info.lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .count()
    }

    /// A Sentinel monitoring `master` as `name` (quorum 2), with the short
    /// timeouts the tests use: down after 500 ms, failover timeout 2 s. Its
    /// config file (Sentinel rewrites it) lives in `dir`.
    pub fn sentinel(master: &RedisServer, name: &str, dir: &std::path::Path) -> RedisServer {
        let conf = dir.join(format!("sentinel-{}.conf", free_port()));
        let text = format!(
            "sentinel monitor {name} 127.0.0.1 {port} 2\n\
             sentinel down-after-milliseconds {name} 500\n\
             sentinel failover-timeout {name} 2000\n\
             sentinel parallel-syncs {name} 1\n",
            port = master.port
        );
        std::fs::write(&conf, text).expect("write the sentinel config");
        let leading = [conf.to_string_lossy().into_owned(), "--sentinel".into()];
        Self::start_with(&leading, &[])
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(self.dir());
    }
}

/// A port nobody listens on right now.
/// A port for a redis-server with `extra` arguments. A cluster node also
/// listens on its port + 10000 (the cluster bus): that must exist (so the
/// port is at most 55535) and be free.
fn port_for(extra: &[String]) -> u16 {
    if !extra.iter().any(|a| a == "--cluster-enabled") {
        return free_port();
    }
    for _ in 0..1000 {
        let port = free_port();
        let bus_free =
            port <= 55_535 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok();
        if bus_free {
            return port;
        }
    }
    panic!("no free port with a free cluster bus port");
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A redix node in Redis mode, started and waited on until `/readyz` says
/// the Redis round trip works and its job engine holds its two Redis
/// connections (so fd counts taken now are the node's steady state).
pub fn redis_node(redis: &RedisServer, args: &[&str]) -> Server {
    let url = redis.url();
    let mut all = vec!["--redis", url.as_str()];
    all.extend_from_slice(args);
    let node = Server::start(&all);
    wait_until("the node to be ready", || {
        get(node.addr, "/readyz").0 == 200
    });
    wait_until("the job engine's Redis connections", || {
        let (status, body) = get(node.addr, "/debug/fds");
        let fds: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        status == 200 && fds["owned"]["jobs"] == 2
    });
    node
}

/// Publishes and returns (status, body as JSON or the raw text as a string).
/// A Redis stream id `ms-n` as a pair that orders like the id.
pub fn stream_id(s: &str) -> (u64, u64) {
    let (ms, n) = s
        .split_once('-')
        .unwrap_or_else(|| panic!("not a stream id: {s}"));
    (ms.parse().expect("ms"), n.parse().expect("n"))
}
