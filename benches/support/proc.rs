//! Reading processes from `/proc`: memory (`VmRSS`, `VmHWM`), CPU (utime + stime, the whole
//! box's busy share), liveness, and finding processes (children, listeners on a port).
//! Leaf module (std and libc).

use std::fs;
use std::net::SocketAddrV4;

type Res<T> = Result<T, String>;

/// VmRSS of `pid`, in KiB.
pub fn rss_kib(pid: i32) -> Res<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `kB` line of /proc/PID/status (`VmRSS:`, `VmHWM:` — the peak RSS so far).
pub fn status_kib(pid: i32, field: &str) -> Res<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| {
            let name = field.trim_end_matches(':');
            format!("no {name} in /proc/{pid}/status (the process has exited)")
        })
}

/// Fields after the `(comm)` of /proc/PID/stat; index 0 is field 3 (state).
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// (utime, stime) of the whole process (all threads), in clock ticks.
fn user_sys_ticks(pid: i32) -> Res<(u64, u64)> {
    let f = stat_fields(pid).ok_or_else(|| format!("cannot read /proc/{pid}/stat"))?;
    // utime and stime are fields 14 and 15.
    let u: u64 = f.get(11).and_then(|v| v.parse().ok()).ok_or("bad utime")?;
    let s: u64 = f.get(12).and_then(|v| v.parse().ok()).ok_or("bad stime")?;
    Ok((u, s))
}

/// utime + stime of the whole process (all threads), in clock ticks.
pub fn cpu_ticks(pid: i32) -> Res<u64> {
    user_sys_ticks(pid).map(|(u, s)| u + s)
}

/// (utime, stime) of the whole process (all threads), in seconds.
pub fn cpu_secs(pid: i32) -> Res<(f64, f64)> {
    let (u, s) = user_sys_ticks(pid)?;
    let tck = clk_tck();
    Ok((u as f64 / tck, s as f64 / tck))
}

/// Clock ticks per second (`_SC_CLK_TCK`, 100 if unknown).
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds this process has used (all threads).
pub fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut r);
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(r.ru_utime) + t(r.ru_stime)
    }
}

/// (busy, total) jiffies of the whole box, from the `cpu` line of /proc/stat.
pub fn box_cpu() -> (u64, u64) {
    let s = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// How busy the box was between two `box_cpu` samples, in % of one core.
pub fn box_busy_pct(a: (u64, u64), b: (u64, u64)) -> f64 {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    if b.1 > a.1 {
        (b.0 - a.0) as f64 / (b.1 - a.1) as f64 * 100.0 * cores
    } else {
        0.0
    }
}

/// The process exists and is neither a zombie nor dead.
pub fn alive(pid: i32) -> bool {
    match stat_fields(pid) {
        Some(f) => f.first().map(|s| s != "Z" && s != "X").unwrap_or(false),
        None => false,
    }
}

pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn children_of(ppid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| stat_fields(p).and_then(|f| f.get(1)?.parse::<i32>().ok()) == Some(ppid))
        .collect()
}

/// Processes holding a listening TCP socket bound to `addr`.
pub fn listening_pids(addr: SocketAddrV4) -> Vec<i32> {
    let want = format!(
        "{:08X}:{:04X}",
        u32::from(*addr.ip()).swap_bytes(),
        addr.port()
    );
    let mut inodes = Vec::new();
    if let Ok(t) = fs::read_to_string("/proc/net/tcp") {
        for l in t.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 9 && f[1] == want && f[3] == "0A" {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return Vec::new();
    }
    let holds = |p: i32| {
        fs::read_dir(format!("/proc/{p}/fd")).is_ok_and(|d| {
            d.filter_map(|e| e.ok()).any(|e| {
                fs::read_link(e.path())
                    .map(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
                    .unwrap_or(false)
            })
        })
    };
    all_pids().into_iter().filter(|&p| holds(p)).collect()
}
