//! `--floor`: the machine's write floor, measured in the same run as the server.
//!
//! After each fanout rate, `../shared/tools/floor/floor.c` (built once with `gcc -O2` into
//! `target/release/floor`) writes one `--floor-size`-byte event per `writev` to as many
//! loopback sockets as there were subscribers (at most half the open-file limit: it holds
//! both ends of each; 9,968 here for a 10k run): once paced at the fanout's rate, once back to
//! back, for `min(rate × duration, 200)` rounds each. It reports its writer thread's CPU
//! per write (kernel loopback delivery included); the server's CPU per delivery is given as
//! a ratio to both. Nothing else runs meanwhile (the server is idle between rates).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::cli::Args;
use crate::fanout::FanoutResult;
use crate::output::emit_json;
use crate::Res;

const MAX_ROUNDS: f64 = 200.0;

/// The floor beside one fanout run: writer CPU per write, µs.
#[derive(Clone, Copy)]
pub struct Floor {
    /// paced at the fanout's rate
    pub paced_us: f64,
    pub back_to_back_us: f64,
}

impl Floor {
    /// The p99 one event per write allows at this rate: every subscriber's write at the paced
    /// floor, spread over the box's cores (DESIGN.md: "1k writes × floor / cores"), µs.
    pub fn allowed_p99_us(&self, subs: usize) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        subs as f64 * self.paced_us / cores as f64
    }
}

/// Builds the floor program unless it is there already.
fn floor_bin(src: &Path) -> Res<PathBuf> {
    let bin = PathBuf::from("target/release/floor");
    if bin.exists() {
        return Ok(bin);
    }
    let status = Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(src)
        .status()
        .map_err(|e| format!("gcc: {e}"))?;
    match status.success() {
        true => Ok(bin),
        false => Err(format!("gcc {} failed: {status}", src.display())),
    }
}

/// Runs the floor once; µs of writer CPU per write. Its reader is a forked child in the same
/// process group, so a run that overstays is killed as a group.
fn run_floor(bin: &Path, conns: usize, rounds: u64, rate: f64, size: usize) -> Res<f64> {
    let mut child = Command::new(bin)
        .args([
            conns.to_string(),
            rounds.to_string(),
            rate.to_string(),
            size.to_string(),
        ])
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("floor: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() > deadline {
            // SAFETY: signals the process group this bench started (pgid = the child's pid).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Err("floor took over 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    out.split(", ")
        .find_map(|part| part.strip_suffix(" us per write"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("floor printed no figure: {out:?}"))
}

/// The most sockets the floor can open: it holds both ends of each (2 fds) before it forks
/// its reader, under this process's open-file limit (inherited), with a few to spare.
fn max_sockets() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    let nofile = if ok { lim.rlim_cur as usize } else { 1024 };
    nofile.saturating_sub(64) / 2
}

/// Runs the floor for a fanout result and prints the ratios; None when it could not run.
pub fn after_fanout(a: &Args, r: &FanoutResult) -> Option<Floor> {
    let rounds = (r.rate * a.duration).clamp(1.0, MAX_ROUNDS) as u64;
    let conns = r.ready.clamp(1, max_sockets());
    let figures = floor_bin(&a.floor_src).and_then(|bin| {
        let paced = run_floor(&bin, conns, rounds, r.rate, a.floor_size)?;
        let back_to_back = run_floor(&bin, conns, rounds, 0.0, a.floor_size)?;
        Ok((paced, back_to_back))
    });
    let (paced, b2b) = match figures {
        Ok(f) => f,
        Err(e) => {
            eprintln!("floor: {e}");
            return None;
        }
    };
    let us = r.cpu_per_delivery_us;
    println!(
        "  write floor         {paced:.2} µs/write paced at {}/s, {b2b:.2} back to back ({conns} sockets, {} B, {rounds} rounds)",
        r.rate, a.floor_size
    );
    println!(
        "  server / floor      {:.2}× the paced floor, {:.2}× back to back ({us:.3} µs per delivery)",
        us / paced,
        us / b2b
    );
    emit_json(
        &json!({"bench":"load","scenario":"floor","subs":r.subs,"rate":r.rate,"floor_paced_us":paced,
            "floor_back_to_back_us":b2b,"cpu_per_delivery_us":us,"ratio_paced":us / paced,
            "ratio_back_to_back":us / b2b,"floor_size":a.floor_size,"rounds":rounds}),
        a,
    );
    Some(Floor {
        paced_us: paced,
        back_to_back_us: b2b,
    })
}
