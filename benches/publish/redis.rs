//! The Redis side of a run: one redis-server, or a Redis Cluster of 3 masters (and
//! `--replicas` replicas each) made with `redis-cli --cluster create`; every server on a free
//! loopback port (a cluster node also on its bus port, port + 10000), without persistence,
//! in a temporary directory of its own, with `PR_SET_PDEATHSIG`. `Drop` stops them (SIGTERM)
//! and removes the directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::Res;
use crate::support::resp::{command, Reply};
use crate::support::spawn::spawn_tied;

/// One redis-server the bench started.
pub struct Server {
    pub port: u16,
    pub child: Child,
    /// a master (of a cluster, or the single server)
    pub master: bool,
}

pub struct Redis {
    pub servers: Vec<Server>,
    pub cluster: bool,
    dir: PathBuf,
}

impl Redis {
    /// One redis-server.
    pub fn single() -> Res<Redis> {
        let mut r = Redis::empty(false)?;
        let s = r.spawn_server()?;
        r.servers.push(s);
        Ok(r)
    }

    /// 3 masters with `replicas` replicas each, `cluster_state:ok` on every node.
    pub fn cluster(replicas: usize) -> Res<Redis> {
        let mut r = Redis::empty(true)?;
        for _ in 0..3 * (1 + replicas) {
            let s = r.spawn_server()?;
            r.servers.push(s);
        }
        let addrs: Vec<String> = r
            .servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .map_err(|e| format!("redis-cli: {e} (apt-get install -y redis-tools)"))?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            return Err(format!("redis-cli --cluster create failed: {text}"));
        }
        r.wait_cluster_ok()?;
        for s in &mut r.servers {
            let role = command(s.port, &["ROLE"])?;
            s.master = role.items().first().and_then(Reply::text).as_deref() == Some("master");
        }
        Ok(r)
    }

    fn empty(cluster: bool) -> Res<Redis> {
        let dir = std::env::temp_dir().join(format!(
            "redix-publish-{}-{}",
            std::process::id(),
            if cluster { "cluster" } else { "single" }
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Redis {
            servers: Vec::new(),
            cluster,
            dir,
        })
    }

    /// A server on a free port (its bus port free too in a cluster), answering PING; the
    /// next port when it could not take one (5 tries).
    fn spawn_server(&self) -> Res<Server> {
        for _ in 0..5 {
            let port = free_port(self.cluster)?;
            let dir = self.dir.join(port.to_string());
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let mut child = self.spawn_on(port, &dir)?;
            if wait_ping(port, &mut child) {
                return Ok(Server {
                    port,
                    child,
                    master: true,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Err("redis-server did not come up on any of 5 free ports".into())
    }

    fn spawn_on(&self, port: u16, dir: &Path) -> Res<Child> {
        let bin = PathBuf::from("redis-server");
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--loglevel", "warning", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--cluster-node-timeout", "2000"]);
        }
        spawn_tied(&mut cmd, &bin, " (apt-get install -y redis-server)")
    }

    fn wait_cluster_ok(&self) -> Res<()> {
        let end = Instant::now() + Duration::from_secs(20);
        for s in &self.servers {
            loop {
                let info = command(s.port, &["CLUSTER", "INFO"])?.text();
                if info.is_some_and(|t| t.contains("cluster_state:ok")) {
                    break;
                }
                if Instant::now() > end {
                    return Err(format!("no cluster_state:ok on {} within 20 s", s.port));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    pub fn masters(&self) -> impl Iterator<Item = &Server> {
        self.servers.iter().filter(|s| s.master)
    }

    /// The redix nodes' setting for this Redis: `--redis URL` or `--set redis.cluster=[…]`.
    pub fn node_args(&self) -> Vec<String> {
        if !self.cluster {
            let url = format!("redis://127.0.0.1:{}", self.servers[0].port);
            return vec!["--redis".into(), url];
        }
        let seeds: Vec<String> = self
            .masters()
            .map(|s| format!("\"redis://127.0.0.1:{}\"", s.port))
            .collect();
        vec![
            "--set".into(),
            format!("redis.cluster=[{}]", seeds.join(",")),
        ]
    }

    /// The master port owning `key` (the single server's port outside a cluster).
    pub fn owner_of(&self, key: &str) -> Res<u16> {
        let first = self.servers[0].port;
        if !self.cluster {
            return Ok(first);
        }
        let slot = match command(first, &["CLUSTER", "KEYSLOT", key])? {
            Reply::Int(s) => s,
            r => return Err(format!("CLUSTER KEYSLOT {key}: {r:?}")),
        };
        let slots = command(first, &["CLUSTER", "SLOTS"])?;
        for range in slots.items() {
            let it = range.items();
            let (Some(Reply::Int(lo)), Some(Reply::Int(hi))) = (it.first(), it.get(1)) else {
                continue;
            };
            if (*lo..=*hi).contains(&slot) {
                let port = it.get(2).and_then(|m| m.items().get(1)?.text());
                return port
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("bad CLUSTER SLOTS entry {range:?}"));
            }
        }
        Err(format!("slot {slot} of {key} has no owner"))
    }

    /// `CONFIG RESETSTAT` on every master (the window's command statistics start now).
    pub fn reset_stats(&self) {
        for s in self.masters() {
            let _ = command(s.port, &["CONFIG", "RESETSTAT"]);
        }
    }

    /// `CLUSTER INFO`'s `cluster_stats_messages_publish_{sent,received}` on `port`: PUBLISH
    /// messages broadcast over the cluster bus (classic pub/sub goes to every node).
    pub fn bus_publishes(&self, port: u16) -> Option<(u64, u64)> {
        let info = command(port, &["CLUSTER", "INFO"]).ok()?.text()?;
        let get = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some((
            get("cluster_stats_messages_publish_sent").unwrap_or(0),
            get("cluster_stats_messages_publish_received").unwrap_or(0),
        ))
    }

    /// `cmd` (`evalsha`: the publish script; `publish`: its PUBLISH inside) on `port` since
    /// `reset_stats`: calls and µs per call, from `INFO commandstats` (the command's own
    /// time, without the per-request work around it).
    pub fn cmd_stats(&self, port: u16, cmd: &str) -> Option<(u64, f64)> {
        let info = command(port, &["INFO", "commandstats"]).ok()?.text()?;
        let head = format!("cmdstat_{cmd}:");
        let line = info.lines().find(|l| l.starts_with(&head))?;
        let field = |name: &str| {
            line.split([':', ','])
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse::<f64>().ok())
        };
        Some((field("calls")? as u64, field("usec_per_call")?))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        for s in &mut self.servers {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
        }
        for s in &mut self.servers {
            let _ = s.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free loopback port; for a cluster node one whose bus port (+10000) is free as well.
fn free_port(cluster: bool) -> Res<u16> {
    for _ in 0..1000 {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        if !cluster {
            return Ok(port);
        }
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port with a free cluster bus port".into())
}

/// Waits (10 s at most) until the server answers PING; false when it exited first.
fn wait_ping(port: u16, child: &mut Child) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        if matches!(command(port, &["PING"]), Ok(Reply::Status(s)) if s == "PONG") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
