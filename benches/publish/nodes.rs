//! The redix nodes of a run: `--nodes` processes, each on its own port (`--listen
//! 127.0.0.1:0`, read from its `redix listening on` line), attached to the run's Redis, and
//! waited on until `/readyz` answers 200 (a canary went through Redis). stderr goes to
//! `target/release/redix-publish-<mode>-<i>.stderr`. `Drop` stops them with SIGTERM.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::Res;
use crate::support::http::status_of;
use crate::support::spawn::{listening_addr, spawn_tied};

pub struct NodeOpts<'a> {
    pub bin: &'a PathBuf,
    pub count: usize,
    pub workers: usize,
    /// `--redis URL` or `--set redis.cluster=[…]`
    pub redis_args: Vec<String>,
    /// the user's `--set key=value`s
    pub sets: &'a [String],
    /// for the log file names
    pub tag: &'static str,
}

pub struct Node {
    pub addr: SocketAddr,
    pub child: Child,
}

pub struct Nodes(pub Vec<Node>);

impl Nodes {
    pub fn start(o: &NodeOpts) -> Res<Nodes> {
        let mut nodes = Nodes(Vec::new());
        for i in 0..o.count {
            let node = start_one(o, i)?;
            nodes.0.push(node);
        }
        let end = Instant::now() + Duration::from_secs(30);
        for (i, n) in nodes.0.iter().enumerate() {
            while get(n.addr, "/readyz").map(|(s, _)| s) != Ok(200) {
                if Instant::now() > end {
                    return Err(format!("node {i} not ready (/readyz) within 30 s"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(nodes)
    }

    pub fn pids(&self) -> Vec<i32> {
        self.0.iter().map(|n| n.child.id() as i32).collect()
    }
}

fn start_one(o: &NodeOpts, i: usize) -> Res<Node> {
    let mut cmd = Command::new(o.bin);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--workers",
        &o.workers.to_string(),
    ])
    .args(["--set", "limits.http_per_ip=1000000"])
    .args(&o.redis_args);
    for s in o.sets {
        cmd.args(["--set", s]);
    }
    let path = format!("target/release/redix-publish-{}-{i}.stderr", o.tag);
    let log = File::create(&path).map_err(|e| format!("{path}: {e}"))?;
    cmd.env(
        "REDIX_LOG",
        std::env::var("REDIX_LOG").unwrap_or("warn".into()),
    )
    .stdout(Stdio::piped())
    .stderr(log);
    let mut child = spawn_tied(&mut cmd, o.bin, " (cargo build --release)")?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let addr = listening_addr(out)?.recv_timeout(Duration::from_secs(20));
    match addr {
        Ok(addr) => Ok(Node { addr, child }),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "node {i} did not say where it listens (see {path})"
            ))
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for n in &mut self.0 {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(n.child.id() as i32, libc::SIGTERM) };
        }
        for n in &mut self.0 {
            let _ = n.child.wait();
        }
    }
}

/// A one-shot `GET` (Connection: close): status and body.
pub fn get(addr: SocketAddr, path: &str) -> Res<(u16, String)> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((status_of(&text), body.unwrap_or_default()))
}
