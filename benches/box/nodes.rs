//! The servers measured: `--nodes` redix processes listening on one port (every reactor's
//! listener is `SO_REUSEPORT`, so the kernel spreads connections over them), and with more
//! than one node (or `--redis`) a redis-server on a free port that makes them one cluster.
//! Every child gets `PR_SET_PDEATHSIG`; `Drop` stops them with SIGTERM.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::proc::rss_kib;
use crate::support::spawn::{listening_addr, spawn_tied};

pub struct NodeOpts {
    pub bin: PathBuf,
    pub nodes: usize,
    pub workers: usize,
    pub redis: bool,
    /// extra `--set key=value` for every node
    pub sets: Vec<String>,
}

pub struct Nodes {
    pub addr: SocketAddr,
    pub redix: Vec<Child>,
    pub redis: Option<Child>,
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl Nodes {
    pub fn start(o: &NodeOpts) -> Result<Nodes, String> {
        let port = free_port()?;
        let mut nodes = Nodes {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            redix: Vec::new(),
            redis: None,
        };
        let redis_url = match o.redis {
            true => Some(nodes.start_redis()?),
            false => None,
        };
        let listen = nodes.addr.to_string();
        for i in 0..o.nodes {
            let mut cmd = Command::new(&o.bin);
            cmd.args(["--listen", &listen, "--workers", &o.workers.to_string()])
                .args(["--set", "limits.sse_per_ip=1000000"])
                .args(["--set", "limits.ws_per_ip=1000000"])
                .args(["--set", "limits.http_per_ip=1000000"]);
            if let Some(url) = &redis_url {
                cmd.args(["--redis", url]);
            }
            for s in &o.sets {
                cmd.args(["--set", s]);
            }
            let log = File::create(format!("target/release/redix-box-{i}.stderr"))
                .map_err(|e| format!("node log: {e}"))?;
            cmd.env(
                "REDIX_LOG",
                std::env::var("REDIX_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(log);
            let mut child = spawn_tied(&mut cmd, &o.bin, " (cargo build --release)")?;
            let out = child.stdout.take().ok_or("no stdout")?;
            nodes.redix.push(child);
            listening_addr(out)?
                .recv_timeout(Duration::from_secs(20))
                .map_err(|_| format!("node {i} did not say where it listens"))?;
        }
        if o.redis {
            nodes.wait_ready(o.nodes)?;
        }
        Ok(nodes)
    }

    fn start_redis(&mut self) -> Result<String, String> {
        let port = free_port()?;
        let bin = PathBuf::from("redis-server");
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.redis = Some(spawn_tied(
            &mut cmd,
            &bin,
            " (apt-get install -y redis-server)",
        )?);
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > end {
                return Err("redis-server did not listen".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(format!("redis://127.0.0.1:{port}"))
    }

    /// `/readyz` 200 on 4 × nodes consecutive fresh connections (each lands on a node
    /// the kernel picks), within 30 s.
    fn wait_ready(&self, nodes: usize) -> Result<(), String> {
        let end = Instant::now() + Duration::from_secs(30);
        let mut streak = 0;
        while streak < 4 * nodes {
            if Instant::now() > end {
                return Err("the nodes did not all answer /readyz 200 within 30 s".into());
            }
            match get(self.addr, "/readyz").map(|(s, _)| s) {
                Ok(200) => streak += 1,
                _ => {
                    streak = 0;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<i32> {
        self.redix.iter().map(|c| c.id() as i32).collect()
    }

    /// VmRSS of every redix node summed, KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pids().iter().map(|&p| rss_kib(p).unwrap_or(0)).sum()
    }

    /// Open fds of each node (≈ its connections + a few dozen of its own).
    pub fn fds(&self) -> Vec<usize> {
        let count = |p: i32| {
            std::fs::read_dir(format!("/proc/{p}/fd"))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        self.pids().into_iter().map(count).collect()
    }

    pub fn alive(&self) -> usize {
        let pids = self.pids();
        pids.iter()
            .filter(|&&p| crate::support::proc::alive(p))
            .count()
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in self.redix.iter_mut().chain(self.redis.iter_mut()) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in self.redix.iter_mut().chain(self.redis.iter_mut()) {
            let _ = c.wait();
        }
    }
}

/// A one-shot `GET` (Connection: close): status and body.
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = crate::support::http::status_of(&text);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((status, body.unwrap_or_default()))
}
