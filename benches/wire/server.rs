//! The redix process the wire bench starts (`--listen 127.0.0.1:0 --workers N`, stderr in
//! target/release/redix-wire.stderr, stopped with SIGTERM, SIGKILL after 15 s), and the
//! watchdog that kills it and exits at the `--max-secs` deadline or 15 s after a signal.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::spawn::{
    check_interrupted, interrupted, listening_addr, spawn_tied, tail_file,
};
use crate::{Args, Res};

/// Every redix we started and have not reaped, for the watchdog.
static PIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Kills every registered redix and exits once the run is over its deadline, or 15 s after
/// a signal if the main thread has not finished by then.
pub fn start_watchdog(max: Duration) {
    let t0 = Instant::now();
    thread::spawn(move || {
        let mut signalled: Option<Instant> = None;
        loop {
            thread::sleep(Duration::from_millis(100));
            if interrupted() && signalled.is_none() {
                signalled = Some(Instant::now());
            }
            let over = t0.elapsed() > max;
            let stuck = signalled.is_some_and(|s| s.elapsed() > Duration::from_secs(15));
            if over || stuck {
                eprintln!(
                    "wire: {}; killing redix and exiting",
                    if over {
                        format!("over the {} s deadline (--max-secs)", max.as_secs())
                    } else {
                        "still running 15 s after a signal".to_string()
                    }
                );
                let pids = PIDS.lock().map(|p| p.clone()).unwrap_or_default();
                for &p in &pids {
                    // SAFETY: kill(2) on a child we started and have not reaped.
                    unsafe { libc::kill(p, libc::SIGTERM) };
                }
                thread::sleep(Duration::from_secs(2));
                for &p in &pids {
                    // SAFETY: as above.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
                std::process::exit(3);
            }
        }
    });
}

pub struct Server {
    pub child: Option<Child>,
    pub pid: i32,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub args: Vec<String>,
}

impl Server {
    pub fn start(a: &Args, extra: &[&str]) -> Res<Server> {
        let bin = &a.redix_bin;
        if !bin.exists() {
            return Err(format!(
                "redix binary {} not found; build it first: cargo build --release",
                bin.display()
            ));
        }
        let log = bin
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("redix-wire.stderr");
        let errf = fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let workers = a.workers.to_string();
        let mut args: Vec<String> = ["--listen", "127.0.0.1:0", "--workers", &workers]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(errf));
        if std::env::var_os("REDIX_LOG").is_none() {
            cmd.env("REDIX_LOG", "warn");
        }
        let mut child = spawn_tied(&mut cmd, bin, "")?;
        let pid = child.id() as i32;
        if let Ok(mut p) = PIDS.lock() {
            p.push(pid);
        }
        let rx = listening_addr(child.stdout.take().ok_or("no stdout")?)?;
        let mut srv = Server {
            child: Some(child),
            pid,
            addr: "127.0.0.1:0".parse().expect("literal address"),
            log,
            args,
        };
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(50)) {
                srv.addr = addr;
                return Ok(srv);
            }
            srv.check_alive()?;
            check_interrupted()?;
            if Instant::now() > until {
                return Err(format!(
                    "redix did not print its listening line within 20 s; stderr: {}",
                    srv.log_tail()
                ));
            }
        }
    }

    fn log_tail(&self) -> String {
        tail_file(&self.log, 15)
    }

    pub fn check_alive(&mut self) -> Res<()> {
        if let Some(c) = &mut self.child {
            if let Ok(Some(st)) = c.try_wait() {
                return Err(format!("redix exited ({st}); stderr: {}", self.log_tail()));
            }
        }
        Ok(())
    }

    /// SIGTERM, up to 15 s to exit (the drain window is 10 s), then SIGKILL.
    pub fn stop(&mut self) -> String {
        let Some(mut c) = self.child.take() else {
            return String::new();
        };
        let msg = match c.try_wait() {
            Ok(Some(st)) => format!("had already exited ({st})"),
            _ => {
                let t0 = Instant::now();
                // SAFETY: kill(2) on our own unreaped child.
                unsafe { libc::kill(self.pid, libc::SIGTERM) };
                loop {
                    if let Ok(Some(st)) = c.try_wait() {
                        break format!("SIGTERM: exited ({st}) in {} ms", t0.elapsed().as_millis());
                    }
                    if t0.elapsed() > Duration::from_secs(15) {
                        let _ = c.kill();
                        let _ = c.wait();
                        break "did not exit within 15 s of SIGTERM; killed".to_string();
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
        };
        if let Ok(mut p) = PIDS.lock() {
            p.retain(|&x| x != self.pid);
        }
        msg
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
