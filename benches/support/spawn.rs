//! Processes the benches start and the signals that stop a run: Ctrl-C/SIGTERM/SIGHUP only
//! set a flag the loops poll; every child gets `PR_SET_PDEATHSIG`, so even a `kill -9` of
//! the bench takes it down. Also the redix binary cargo built and its "listening" line.
//! Leaf module (std, libc, crossbeam-channel).

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Relaxed);
}

/// SIGINT, SIGTERM and SIGHUP set the flag `interrupted` reads.
pub fn install_signal_handlers() {
    let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
        libc::signal(libc::SIGHUP, h);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Relaxed)
}

/// `Err("interrupted")` once a signal arrived, for `?` in the scenario code.
pub fn check_interrupted() -> Result<(), String> {
    if interrupted() {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// The redix binary cargo built alongside the bench, else target/release/redix (cargo
/// bench runs in the crate root).
pub fn default_redix_bin() -> PathBuf {
    PathBuf::from(option_env!("CARGO_BIN_EXE_redix").unwrap_or("target/release/redix"))
}

/// Spawns `cmd` (program `bin`) so that it dies with the bench; `hint` says how to install
/// it when it cannot start.
pub fn spawn_tied(cmd: &mut Command, bin: &Path, hint: &str) -> Result<Child, String> {
    // SAFETY: prctl is async-signal-safe; it only ties the child's life to ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| format!("spawn {}: {e}{hint}", bin.display()))
}

/// Reads redix's stdout on a thread: sends the address of its `redix listening on ADDR`
/// line, then keeps draining so the pipe never fills.
pub fn listening_addr(
    stdout: ChildStdout,
) -> Result<crossbeam_channel::Receiver<SocketAddr>, String> {
    listening_addr_after(stdout, "redix listening on ")
}

/// `listening_addr` for a line `<prefix>ADDR` (e.g. `finnhub-sim listening on `).
pub fn listening_addr_after(
    stdout: ChildStdout,
    prefix: &'static str,
) -> Result<crossbeam_channel::Receiver<SocketAddr>, String> {
    let (tx, rx) = crossbeam_channel::bounded::<SocketAddr>(1);
    thread::Builder::new()
        .name("child-stdout".into())
        .spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let addr = line
                    .split_once(prefix)
                    .and_then(|(_, a)| a.trim().parse().ok());
                if let Some(addr) = addr {
                    let _ = tx.try_send(addr);
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(rx)
}

/// The address in a `redix listening on ADDR` line.
pub fn listening_line(line: &str) -> Option<SocketAddr> {
    line.split_once("redix listening on ")?
        .1
        .trim()
        .parse()
        .ok()
}

/// The last `lines` lines of a log file.
pub fn tail_file(p: &Path, lines: usize) -> String {
    let s = fs::read_to_string(p).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
