//! The servers a run measures: a redix process we start (its port read from its
//! "listening" line, its stderr in a file next to the binary), how to tell it is still up,
//! and how it is stopped (SIGTERM, SIGKILL after 10 s). nchan and redis-server are started in
//! `peers`.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::{Args, Transport};
use crate::support::proc::alive;
use crate::support::spawn::{interrupted, listening_addr, listening_line, spawn_tied, tail_file};
use crate::support::ws;
use crate::Res;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Redix,
    Nchan,
    /// the redis-server behind redix nodes in Redis mode (never a load target itself)
    Redis,
    /// `redix finnhub-sim`, the market scenario's upstream (never a load target itself)
    FinnhubSim,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Redix => "redix",
            Kind::Nchan => "nchan",
            Kind::Redis => "redis-server",
            Kind::FinnhubSim => "finnhub-sim",
        }
    }
}

pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// the process measured (redix itself, or the nginx worker)
    pub pid: i32,
    /// what we started: redix, or the nginx master (run with `daemon off`)
    pub child: Option<Child>,
    pub extra_pids: Vec<i32>,
    pub dir: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub note: String,
    pub stopped: bool,
}

impl Server {
    /// One redix process. `node`: None for embedded mode; Some((i, redis URL)) for node i of
    /// a Redis-mode cluster (its own stderr file, `--redis`, `--redis-node-workers`).
    pub fn start_redix(a: &Args, tr: Transport, node: Option<(usize, &str)>) -> Res<Server> {
        let bin = &a.redix_bin;
        if !bin.exists() {
            return Err(format!(
                "redix binary {} not found (cwd {}); build it first: cargo build --release",
                bin.display(),
                std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            ));
        }
        // Next to the binary (target/release/redix-load.stderr, …-node0.stderr, …), overwritten
        // by each run.
        let log = bin
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(match node {
                None => "redix-load.stderr".to_string(),
                Some((i, _)) => format!("redix-load-node{i}.stderr"),
            });
        let errf = fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let mut cmd = redix_command(a, tr, node);
        cmd.stderr(Stdio::from(errf));
        let mut child = spawn_tied(&mut cmd, bin, "")?;
        let pid = child.id() as i32;
        let rx = listening_addr(child.stdout.take().ok_or("no stdout")?)?;
        let mut srv = Server {
            kind: Kind::Redix,
            addr: "127.0.0.1:0".parse().unwrap(),
            pid,
            child: Some(child),
            extra_pids: vec![],
            dir: None,
            log: Some(log.clone()),
            note: format!(
                "started {} (pid {pid}), stderr in {}",
                bin.display(),
                log.display()
            ),
            stopped: false,
        };
        srv.addr = srv.wait_listening(&rx, &log)?;
        Ok(srv)
    }

    /// The address of redix's `redix listening on ADDR` line (printed on stdout; accepted on
    /// stderr too), within 20 s.
    /// Waits for the address the process prints when it listens (read
    /// from its stdout by `rx`, or a redix line in its log), while it lives.
    pub(crate) fn wait_listening(
        &mut self,
        rx: &crossbeam_channel::Receiver<SocketAddr>,
        log: &Path,
    ) -> Res<SocketAddr> {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
                return Ok(addr);
            }
            let text = fs::read_to_string(log).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(listening_line) {
                return Ok(addr);
            }
            self.check_alive()?;
            if Instant::now() > until || interrupted() {
                return Err(format!(
                    "{:?} did not print its listening address within 20 s; stderr tail:\n{}",
                    self.kind,
                    tail_file(log, 20)
                ));
            }
        }
    }

    pub fn check_alive(&mut self) -> Res<()> {
        let dead = !alive(self.pid);
        if let Some(c) = &mut self.child {
            for _ in 0..if dead { 10 } else { 1 } {
                if let Ok(Some(st)) = c.try_wait() {
                    let tail = self
                        .log
                        .as_deref()
                        .map(|p| tail_file(p, 30))
                        .unwrap_or_default();
                    return Err(format!(
                        "{} exited unexpectedly ({st}); log tail:\n{tail}",
                        self.kind.name()
                    ));
                }
                if dead {
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
        if dead {
            return Err(format!("{} process {} is gone", self.kind.name(), self.pid));
        }
        Ok(())
    }

    /// What a WebSocket subscriber sends: redix `/ws`, then a subscribe message; nchan
    /// `/sub/CH` (the URL subscribes).
    pub fn ws_config(&self, channel: &str) -> ws::Config {
        let (path, subscribe) = match self.kind {
            Kind::Nchan => (format!("/sub/{channel}"), None),
            Kind::Redix | Kind::Redis | Kind::FinnhubSim => (
                "/ws".to_string(),
                Some(
                    serde_json::json!({"type": "subscribe", "channel": channel})
                        .to_string()
                        .into_bytes(),
                ),
            ),
        };
        ws::Config {
            path,
            host: self.addr.to_string(),
            subscribe,
        }
    }

    /// The SSE request: redix `/api/stream?channels=CH`, nchan `/sub/CH`.
    pub fn sse_request(&self, channel: &str) -> Vec<u8> {
        let path = match self.kind {
            Kind::Nchan => format!("/sub/{channel}"),
            Kind::Redix | Kind::Redis | Kind::FinnhubSim => {
                format!("/api/stream?channels={channel}")
            }
        };
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
            self.addr
        )
        .into_bytes()
    }

    /// Stops what we started. Returns how it ended.
    pub fn stop(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        self.stopped = true;
        let mut msg = String::from("left running (not started by the generator)");
        if let Some(mut c) = self.child.take() {
            let pid = c.id() as i32;
            msg = match c.try_wait() {
                Ok(Some(st)) => {
                    format!("had already exited ({st}) before the generator stopped it")
                }
                _ => {
                    let t0 = Instant::now();
                    // SAFETY: kill(2) on our own unreaped child.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                    loop {
                        if let Ok(Some(st)) = c.try_wait() {
                            break format!(
                                "SIGTERM → exited ({st}) in {} ms",
                                t0.elapsed().as_millis()
                            );
                        }
                        if t0.elapsed() > Duration::from_secs(10) {
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                            let st = c.wait().map(|s| s.to_string()).unwrap_or_default();
                            break format!("did not exit within 10 s of SIGTERM; SIGKILLed ({st})");
                        }
                        thread::sleep(Duration::from_millis(20));
                    }
                }
            };
        }
        for &p in &self.extra_pids {
            let t0 = Instant::now();
            while alive(p) && t0.elapsed() < Duration::from_secs(3) {
                thread::sleep(Duration::from_millis(20));
            }
            if alive(p) {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        if let Some(d) = self.dir.take() {
            let _ = fs::remove_dir_all(d);
        }
        msg
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `redix --listen 127.0.0.1:0 --workers N --sse-per-ip 1000000 --set limits.http_per_ip=1000000 …`
/// (binaries older than that key refuse it), quiet logs unless the
/// caller chose a level, stdout piped for the "listening" line.
fn redix_command(a: &Args, tr: Transport, node: Option<(usize, &str)>) -> Command {
    let workers = match node {
        None => a.redix_workers,
        Some(_) => a.redis_node_workers,
    };
    let mut cmd = Command::new(&a.redix_bin);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--workers",
        &workers.to_string(),
        "--sse-per-ip",
        "1000000",
        // Plain HTTP connections per IP default to 64; up to 512 of the
        // generator's connections per address are in their HTTP phase at once.
        "--set",
        "limits.http_per_ip=1000000",
    ])
    .args(node.into_iter().flat_map(|(_, url)| ["--redis", url]))
    // WebSockets per client IP default to 50; the generator puts 2,000 on each address.
    .args(match tr {
        Transport::Sse => &[][..],
        Transport::Ws => &["--set", "limits.ws_per_ip=1000000"][..],
    })
    .args(&a.redix_args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    // redix reads REDIX_LOG
    for var in ["REDIX_LOG", "RUST_LOG"] {
        if std::env::var_os(var).is_none() {
            cmd.env(var, "warn");
        }
    }
    cmd
}
