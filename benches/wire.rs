//! Bytes on the wire per event, and the cost of resume; see BENCHMARKS.md.
//!
//! `cargo bench --bench wire -- [--scenario bytes|resume|all] ...`
//!
//! * bytes: a trade-like stream (`--rate` events/s for `--secs` s on `trades:AAPL`) read at
//!   the same time by one client of each variant: SSE plain / gzip / `&batch=1` / gzip+batch,
//!   WebSocket plain / permessage-deflate / `?batch=1` / deflate+batch. Every client decodes
//!   everything it gets (gzip and deflate included), checks it received exactly the
//!   published ids in order, and counts the bytes and `read(2)` calls after the response
//!   head. Run twice: with redix's default `ws.deflate_min_bytes` and with 0. Then, unless
//!   `--per-variant-secs 0`, each variant alone, for redix's own write counters per variant.
//! * resume: `--events` H events published (pipelined) to one channel nobody listens to,
//!   then `--clients` K SSE clients with `lastEventId=0` (and then K WebSocket clients with
//!   `"since":"0"`) connect at once; time until every client has all H events, server CPU
//!   (Δ utime+stime of /proc/PID/stat) and VmRSS around it, `redix_replayed_total`.
//!
//! The bench starts the release redix itself (`--listen 127.0.0.1:0 --workers 2`), stops it
//! with SIGTERM at the end, on error, on Ctrl-C and at the `--max-secs` deadline (and the
//! child gets PR_SET_PDEATHSIG). Output: tables, then one JSON line per result.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use serde_json::{json, Value};

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ScenarioSel {
    Bytes,
    Resume,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TransportSel {
    Sse,
    Ws,
    Both,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "wire",
    about = "redix: bytes on the wire per event, and the cost of resume (loopback only)"
)]
struct Args {
    #[arg(long, value_enum, default_value = "all")]
    scenario: ScenarioSel,
    /// bytes: events published per second
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// bytes: seconds of publishing
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// bytes: channel of the trade stream
    #[arg(long, default_value = "trades:AAPL")]
    channel: String,
    /// bytes: `batch.window_ms` redix runs with
    #[arg(long, default_value_t = 50)]
    window_ms: u64,
    /// bytes: seconds of publishing for each variant alone (write counters); 0 skips it
    #[arg(long, default_value_t = 2.0)]
    per_variant_secs: f64,
    /// resume: events in history (H)
    #[arg(long, default_value_t = 50_000)]
    events: u64,
    /// resume: clients replaying at once (K)
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// resume: size of each event's `data` JSON
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// resume: which transports to measure
    #[arg(long, value_enum, default_value = "both")]
    transport: TransportSel,
    /// resume: longest a replay may take before the run fails
    #[arg(long, default_value_t = 120)]
    replay_timeout_secs: u64,
    /// the whole run is killed (redix first) after this many seconds
    #[arg(long, default_value_t = 540)]
    max_secs: u64,
    #[arg(long, default_value_os_t = default_redix_bin())]
    redix_bin: PathBuf,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

fn default_redix_bin() -> PathBuf {
    PathBuf::from(option_env!("CARGO_BIN_EXE_redix").unwrap_or("target/release/redix"))
}

// ---------------------------------------------------------------------------------------------
// Signals, the global deadline, small helpers
// ---------------------------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Every redix we started and have not reaped, for the watchdog.
static PIDS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Relaxed);
}

fn install_signal_handlers() {
    let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
        libc::signal(libc::SIGHUP, h);
    }
}

fn interrupted() -> Res<()> {
    if INTERRUPTED.load(Relaxed) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// Kills every registered redix and exits once the run is over its deadline, or 15 s after
/// a signal if the main thread has not finished by then.
fn start_watchdog(max: Duration) {
    let t0 = Instant::now();
    thread::spawn(move || {
        let mut signalled: Option<Instant> = None;
        loop {
            thread::sleep(Duration::from_millis(100));
            if INTERRUPTED.load(Relaxed) && signalled.is_none() {
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

fn thousands(v: f64) -> String {
    let neg = v < 0.0;
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if neg {
        format!("-{out}")
    } else {
        out
    }
}

/// A table header: width < 0 aligns left, 0 leaves the cell as it is; cells are
/// separated by one space.
fn header(cols: &[(&str, i32)]) -> String {
    let mut out = String::new();
    for (i, (name, w)) in cols.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let w = w.unsigned_abs() as usize;
        let pad = " ".repeat(w.saturating_sub(name.chars().count()));
        if cols[i].1 < 0 {
            out.push_str(name);
            out.push_str(&pad);
        } else {
            out.push_str(&pad);
            out.push_str(name);
        }
    }
    out
}

fn round(v: f64, d: i32) -> f64 {
    let p = 10f64.powi(d);
    (v * p).round() / p
}

// ---------------------------------------------------------------------------------------------
// /proc and CPU
// ---------------------------------------------------------------------------------------------

fn rss_kib(pid: i32) -> Res<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `kB` line of /proc/PID/status (`VmRSS:`, `VmHWM:` — the peak RSS so far).
fn status_kib(pid: i32, field: &str) -> Res<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
}

/// (utime, stime) of the whole process (all threads), in seconds.
fn cpu_secs(pid: i32) -> Res<(f64, f64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
    let rest = s
        .rfind(')')
        .and_then(|i| s.get(i + 2..))
        .ok_or("bad /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Index 0 is field 3 (state); utime and stime are fields 14 and 15.
    let u: u64 = f.get(11).and_then(|v| v.parse().ok()).ok_or("bad utime")?;
    let st: u64 = f.get(12).and_then(|v| v.parse().ok()).ok_or("bad stime")?;
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    Ok((u as f64 / tck, st as f64 / tck))
}

/// CPU seconds this bench process has used (all threads).
fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut r);
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(r.ru_utime) + t(r.ru_stime)
    }
}

// ---------------------------------------------------------------------------------------------
// The redix process
// ---------------------------------------------------------------------------------------------

struct Server {
    child: Option<Child>,
    pid: i32,
    addr: SocketAddr,
    log: PathBuf,
    args: Vec<String>,
}

impl Server {
    fn start(a: &Args, extra: &[&str]) -> Res<Server> {
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
        // SAFETY: prctl is async-signal-safe; the child dies with us.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let pid = child.id() as i32;
        if let Ok(mut p) = PIDS.lock() {
            p.push(pid);
        }
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = crossbeam_channel::bounded::<SocketAddr>(1);
        // Reads the ready line, then keeps draining stdout so the pipe never fills.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.trim().strip_prefix("redix listening on ") {
                    if let Ok(addr) = rest.trim().parse::<SocketAddr>() {
                        let _ = tx.try_send(addr);
                    }
                }
            }
        });
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
            interrupted()?;
            if Instant::now() > until {
                return Err(format!(
                    "redix did not print its listening line within 20 s; stderr: {}",
                    srv.log_tail()
                ));
            }
        }
    }

    fn log_tail(&self) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn check_alive(&mut self) -> Res<()> {
        if let Some(c) = &mut self.child {
            if let Ok(Some(st)) = c.try_wait() {
                return Err(format!("redix exited ({st}); stderr: {}", self.log_tail()));
            }
        }
        Ok(())
    }

    /// SIGTERM, up to 15 s to exit (the drain window is 10 s), then SIGKILL.
    fn stop(&mut self) -> String {
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

// ---------------------------------------------------------------------------------------------
// HTTP: one-shot requests, metrics, a keep-alive publisher
// ---------------------------------------------------------------------------------------------

fn http_get(addr: SocketAddr, path: &str) -> Res<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("GET {path}: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| format!("GET {path}: {e}"))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status_of(&text), body))
}

/// Every sample of `/metrics/prom`, keyed by name with its labels as printed.
fn metrics(addr: SocketAddr) -> Res<HashMap<String, f64>> {
    let (status, body) = http_get(addr, "/metrics/prom")?;
    if status != 200 {
        return Err(format!("/metrics/prom answered {status}"));
    }
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

fn delta(m0: &HashMap<String, f64>, m1: &HashMap<String, f64>, k: &str) -> f64 {
    m1.get(k).copied().unwrap_or(0.0) - m0.get(k).copied().unwrap_or(0.0)
}

fn publish_request(channel: &str, data: &str) -> Vec<u8> {
    let body = format!(r#"{{"channel":"{channel}","data":{data}}}"#);
    format!(
        "POST /api/publish HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A keep-alive HTTP/1.1 connection that reads `Content-Length` responses.
struct KeepAlive {
    s: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    fn connect(addr: SocketAddr) -> Res<KeepAlive> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        Ok(KeepAlive {
            s,
            buf: Vec::with_capacity(1 << 16),
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Res<()> {
        self.s
            .write_all(bytes)
            .map_err(|e| format!("publish write: {e}"))
    }

    /// The next response: (status, body).
    fn response(&mut self) -> Res<(u16, Vec<u8>)> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let len: usize = header_value(&head, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let body = self.buf[end + 4..end + 4 + len].to_vec();
                    self.buf.drain(..end + 4 + len);
                    return Ok((status_of(&head), body));
                }
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return Err("publisher connection closed by redix".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("publish read: {e}")),
            }
        }
    }

    /// Reads one publish answer; returns the event id.
    fn publish_answer(&mut self) -> Res<u64> {
        let (status, body) = self.response()?;
        if status != 200 {
            return Err(format!(
                "publish answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| format!("publish answer: {e}"))?;
        v["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("publish answer without id: {v}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Trade-like payloads
// ---------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random walk of AAPL prints: price in cents moving a few ticks, mostly round lots,
/// some odd lots and blocks, millisecond times a few ms apart, sale conditions.
struct Trades {
    rng: Rng,
    cents: i64,
    t_ms: u64,
}

impl Trades {
    fn new(seed: u64) -> Trades {
        Trades {
            rng: Rng(seed | 1),
            cents: 18923,
            t_ms: now_ms(),
        }
    }

    fn next(&mut self) -> String {
        let r = &mut self.rng;
        self.cents += r.below(7) as i64 - 3;
        self.t_ms += 1 + r.below(9);
        let v = match r.below(10) {
            0..=5 => 100 * (1 + r.below(5)),
            6..=8 => 1 + r.below(99),
            _ => 100 * (5 + r.below(46)),
        };
        const CONDS: [&str; 5] = [
            r#"["@"]"#,
            r#"["@","T"]"#,
            r#"["@","I"]"#,
            r#"["@","F"]"#,
            r#"["@","F","I"]"#,
        ];
        let c = CONDS[r.below(CONDS.len() as u64) as usize];
        format!(
            r#"{{"s":"AAPL","p":{}.{:02},"v":{v},"t":{},"c":{c}}}"#,
            self.cents / 100,
            self.cents % 100,
            self.t_ms
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Decoders: SSE (plain or gzip) and WebSocket frames (plain or permessage-deflate)
// ---------------------------------------------------------------------------------------------

/// Inflates one permessage-deflate message (RFC 7692 §7.2.2: append 00 00 ff ff).
fn inflate_message(p: &[u8]) -> Res<Vec<u8>> {
    let mut input = p.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(p.len() * 4 + 256);
    loop {
        let before = (d.total_in(), d.total_out());
        out.reserve(out.capacity().max(1024));
        let space = out.capacity() - out.len();
        let st = d
            .decompress_vec(
                &input[d.total_in() as usize..],
                &mut out,
                FlushDecompress::Sync,
            )
            .map_err(|e| format!("inflate: {e}"))?;
        let produced = (d.total_out() - before.1) as usize;
        // Done once every input byte is in and the output had room to spare.
        if st == Status::StreamEnd || (d.total_in() as usize == input.len() && produced < space) {
            return Ok(out);
        }
        if (d.total_in(), d.total_out()) == before {
            return Err("inflate made no progress".into());
        }
    }
}

/// The gzip body of an SSE stream: a 10-byte header, then flushed deflate chunks.
struct GzIn {
    header: Vec<u8>,
    d: Decompress,
    ended: bool,
}

impl GzIn {
    fn new() -> GzIn {
        GzIn {
            header: Vec::new(),
            d: Decompress::new(false),
            ended: false,
        }
    }

    fn feed(&mut self, mut input: &[u8], text: &mut Vec<u8>) -> Res<()> {
        if self.header.len() < 10 {
            let take = (10 - self.header.len()).min(input.len());
            self.header.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.header.len() == 10 && self.header[..4] != [0x1f, 0x8b, 0x08, 0x00] {
                return Err(format!("not a plain gzip header: {:02x?}", self.header));
            }
        }
        while !self.ended {
            let before = (self.d.total_in(), self.d.total_out());
            text.reserve(1 << 16);
            let space = text.capacity() - text.len();
            let st = self
                .d
                .decompress_vec(input, text, FlushDecompress::Sync)
                .map_err(|e| format!("gunzip: {e}"))?;
            let used = (self.d.total_in() - before.0) as usize;
            let produced = (self.d.total_out() - before.1) as usize;
            input = &input[used..];
            if st == Status::StreamEnd {
                self.ended = true;
            }
            // Stop once every input byte is in and the output had room to spare.
            if input.is_empty() && produced < space
                || (self.d.total_in(), self.d.total_out()) == before
            {
                break;
            }
        }
        Ok(())
    }
}

/// What a scenario-1 client learnt from the body.
#[derive(Default)]
struct Decoded {
    ready: bool,
    ids: Vec<u64>,
    /// compressed WebSocket messages / all data-carrying WebSocket messages
    compressed: u64,
    messages: u64,
    batches: u64,
    /// SSE: each event block as text; WebSocket: each message JSON as text
    texts: Vec<Vec<u8>>,
    first_inflated: Option<String>,
    errors: Vec<String>,
}

impl Decoded {
    fn error(&mut self, e: String) {
        if self.errors.len() < 5 {
            self.errors.push(e);
        }
    }

    /// One `{"type":"message",...}` object; checks the channel.
    fn message(&mut self, v: &Value, channel: &str) {
        if v["channel"] != channel {
            self.error(format!("event on the wrong channel: {v}"));
        }
        match v["id"].as_str().and_then(|s| s.parse().ok()) {
            Some(id) => self.ids.push(id),
            None => self.error(format!("event without id: {v}")),
        }
    }
}

struct SseIn {
    gz: Option<GzIn>,
    text: Vec<u8>,
}

impl SseIn {
    fn feed(&mut self, bytes: &[u8], out: &mut Decoded, channel: &str) -> Res<()> {
        match &mut self.gz {
            Some(gz) => gz.feed(bytes, &mut self.text)?,
            None => self.text.extend_from_slice(bytes),
        }
        let mut start = 0;
        while let Some(i) = find(&self.text[start..], b"\n\n") {
            let block = self.text[start..start + i + 2].to_vec();
            start += i + 2;
            let s = String::from_utf8_lossy(&block);
            let (mut id, mut event, mut data) = (None, None, None);
            for line in s.lines() {
                if line.starts_with(':') {
                    continue;
                }
                let (k, v) = line.split_once(": ").unwrap_or((line, ""));
                match k {
                    "retry" => out.ready = true,
                    "id" => id = v.parse::<u64>().ok(),
                    "event" => event = Some(v.to_string()),
                    "data" => data = Some(v.to_string()),
                    _ => {}
                }
            }
            match event.as_deref() {
                Some("message") => {
                    let v: Value = serde_json::from_str(data.as_deref().unwrap_or(""))
                        .map_err(|e| format!("event data is not JSON: {e}"))?;
                    out.message(&v, channel);
                    if id != out.ids.last().copied() {
                        out.error(format!("id: line {id:?} differs from the data's id"));
                    }
                    out.messages += 1;
                    out.texts.push(block);
                }
                Some(other) => out.error(format!("unexpected event {other}: {s}")),
                None => {}
            }
        }
        self.text.drain(..start);
        Ok(())
    }
}

/// One whole message from the server (fragments joined, inflated if RSV1).
struct WsMsg {
    opcode: u8,
    compressed: bool,
    payload: Vec<u8>,
}

#[derive(Default)]
struct WsIn {
    buf: Vec<u8>,
    frag: Option<(u8, bool, Vec<u8>)>,
}

impl WsIn {
    fn feed(&mut self, bytes: &[u8]) -> Res<Vec<WsMsg>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((first, hdr, len)) = ws_frame_at(&self.buf[at..])? {
            let payload = &self.buf[at + hdr..at + hdr + len];
            let (fin, rsv1, opcode) = (first & 0x80 != 0, first & 0x40 != 0, first & 0x0f);
            at += hdr + len;
            if opcode >= 8 {
                out.push(WsMsg {
                    opcode,
                    compressed: false,
                    payload: payload.to_vec(),
                });
                continue;
            }
            let (op, comp, mut data) = match (opcode, self.frag.take()) {
                (0, Some((op, comp, data))) => (op, comp, data),
                (0, None) => return Err("continuation frame without a start".into()),
                (op, None) => (op, rsv1, Vec::new()),
                (_, Some(_)) => return Err("new message inside a fragmented one".into()),
            };
            data.extend_from_slice(payload);
            if !fin {
                self.frag = Some((op, comp, data));
                continue;
            }
            let payload = if comp { inflate_message(&data)? } else { data };
            out.push(WsMsg {
                opcode: op,
                compressed: comp,
                payload,
            });
        }
        self.buf.drain(..at);
        Ok(out)
    }
}

/// (first byte, header length, payload length) of a complete server frame at the start of `b`.
fn ws_frame_at(b: &[u8]) -> Res<Option<(u8, usize, usize)>> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[1] & 0x80 != 0 {
        return Err("masked frame from the server".into());
    }
    let (len, hdr) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
        127 if b.len() >= 10 => {
            let mut l = [0u8; 8];
            l.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(l) as usize, 10)
        }
        126 | 127 => return Ok(None),
        n => (usize::from(n), 2),
    };
    Ok((b.len() >= hdr + len).then_some((b[0], hdr, len)))
}

/// A masked client frame.
fn ws_client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key = [0x5a, 0x13, 0xc7, 0x2e];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// Connects and sends `request`; returns the socket, the response head and any body bytes
/// that came with it.
fn open(addr: SocketAddr, request: &[u8], timeout: Duration) -> Res<(TcpStream, String, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    // The head may take a while under load; reads after it use `timeout`.
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    s.write_all(request).map_err(|e| format!("request: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
            let rest = buf[i + 4..].to_vec();
            s.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            return Ok((s, head, rest));
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                return Err(format!(
                    "closed before a response head: {:?}",
                    String::from_utf8_lossy(&buf)
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("reading the response head: {e}")),
        }
    }
}

fn ws_upgrade_request(path: &str, key: &str, deflate: bool) -> Vec<u8> {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    );
    if deflate {
        r.push_str("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Checks a 101 answer: status, accept key, and whether permessage-deflate was agreed.
fn check_upgrade(head: &str, key: &str, want_deflate: bool) -> Res<String> {
    if status_of(head) != 101 {
        return Err(format!("upgrade refused: {head:?}"));
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if header_value(head, "sec-websocket-accept") != Some(accept.as_str()) {
        return Err(format!("bad Sec-WebSocket-Accept in {head:?}"));
    }
    let ext = header_value(head, "sec-websocket-extensions")
        .unwrap_or("")
        .to_string();
    let agreed = ext.contains("permessage-deflate");
    if agreed != want_deflate {
        return Err(format!(
            "permessage-deflate {} but {}: {head:?}",
            if want_deflate {
                "offered"
            } else {
                "not offered"
            },
            if agreed { "agreed" } else { "not agreed" }
        ));
    }
    Ok(ext)
}

fn ws_key(n: usize) -> String {
    // 16 bytes → 24 base64 characters; only the shape matters to the server.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    let mut x = (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for _ in 0..21 {
        s.push(alphabet[(x % 64) as usize] as char);
        x = x.rotate_left(7) ^ 0x5555;
    }
    s.push_str("A==");
    s
}

// ---------------------------------------------------------------------------------------------
// Scenario 1: bytes on the wire per event
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Variant {
    name: &'static str,
    ws: bool,
    compress: bool,
    batch: bool,
}

const VARIANTS: [Variant; 8] = [
    Variant {
        name: "sse",
        ws: false,
        compress: false,
        batch: false,
    },
    Variant {
        name: "sse+gzip",
        ws: false,
        compress: true,
        batch: false,
    },
    Variant {
        name: "sse+batch",
        ws: false,
        compress: false,
        batch: true,
    },
    Variant {
        name: "sse+gzip+batch",
        ws: false,
        compress: true,
        batch: true,
    },
    Variant {
        name: "ws",
        ws: true,
        compress: false,
        batch: false,
    },
    Variant {
        name: "ws+deflate",
        ws: true,
        compress: true,
        batch: false,
    },
    Variant {
        name: "ws+batch",
        ws: true,
        compress: false,
        batch: true,
    },
    Variant {
        name: "ws+deflate+batch",
        ws: true,
        compress: true,
        batch: true,
    },
];

/// What one scenario-1 client saw.
struct ClientOut {
    v: Variant,
    /// bytes read after the response head (the whole body)
    bytes: u64,
    /// of which before it was ready (SSE `retry:`, WebSocket subscribe ack)
    pre_bytes: u64,
    /// `read(2)` calls that returned data after it was ready
    reads: u64,
    extensions: String,
    dec: Decoded,
}

struct ClientCtl {
    ready: crossbeam_channel::Sender<Res<()>>,
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

fn bytes_client(
    v: Variant,
    addr: SocketAddr,
    channel: &str,
    n: usize,
    ctl: ClientCtl,
) -> ClientOut {
    let mut out = ClientOut {
        v,
        bytes: 0,
        pre_bytes: 0,
        reads: 0,
        extensions: String::new(),
        dec: Decoded::default(),
    };
    if let Err(e) = bytes_client_inner(&mut out, addr, channel, n, &ctl) {
        out.dec.error(e.clone());
        let _ = ctl.ready.try_send(Err(format!("{}: {e}", v.name)));
    }
    out
}

fn bytes_client_inner(
    out: &mut ClientOut,
    addr: SocketAddr,
    channel: &str,
    n: usize,
    ctl: &ClientCtl,
) -> Res<()> {
    let v = out.v;
    let timeout = Duration::from_millis(100);
    let key = ws_key(n);
    let request = if v.ws {
        ws_upgrade_request(
            if v.batch { "/ws?batch=1" } else { "/ws" },
            &key,
            v.compress,
        )
    } else {
        format!(
            "GET /api/stream?channels={channel}{} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n{}\r\n",
            if v.batch { "&batch=1" } else { "" },
            if v.compress { "Accept-Encoding: gzip\r\n" } else { "" }
        )
        .into_bytes()
    };
    let (mut s, head, rest) = open(addr, &request, timeout)?;
    let mut sse = None;
    let mut ws = None;
    if v.ws {
        out.extensions = check_upgrade(&head, &key, v.compress)?;
        let sub = format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#);
        s.write_all(&ws_client_frame(1, sub.as_bytes()))
            .map_err(|e| format!("subscribe: {e}"))?;
        ws = Some(WsIn::default());
    } else {
        if status_of(&head) != 200 {
            return Err(format!("stream refused: {head:?}"));
        }
        let gz = header_value(&head, "content-encoding") == Some("gzip");
        if gz != v.compress {
            return Err(format!(
                "Content-Encoding gzip is {gz}, wanted {}",
                v.compress
            ));
        }
        out.extensions = if gz { "gzip".into() } else { String::new() };
        sse = Some(SseIn {
            gz: gz.then(GzIn::new),
            text: Vec::new(),
        });
    }
    let mut buf = vec![0u8; 1 << 16];
    let mut pending = rest;
    loop {
        let chunk: &[u8] = if !pending.is_empty() {
            &pending
        } else {
            if ctl.stop.load(Relaxed) {
                return Ok(());
            }
            match s.read(&mut buf) {
                Ok(0) => return Err("redix closed the connection".into()),
                Ok(k) => &buf[..k],
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        };
        out.bytes += chunk.len() as u64;
        if out.dec.ready {
            out.reads += 1;
        }
        let was_ready = out.dec.ready;
        if let Some(sse) = &mut sse {
            sse.feed(chunk, &mut out.dec, channel)?;
        }
        if let Some(ws) = &mut ws {
            for m in ws.feed(chunk)? {
                match m.opcode {
                    9 => {
                        let _ = s.write_all(&ws_client_frame(10, &m.payload));
                    }
                    10 => {}
                    8 => return Err(format!("close frame {:?}", m.payload)),
                    1 => ws_message(&m, &mut out.dec, channel)?,
                    op => return Err(format!("unexpected opcode {op}")),
                }
            }
        }
        if out.dec.ready && !was_ready {
            out.pre_bytes = out.bytes;
            let _ = ctl.ready.try_send(Ok(()));
        }
        ctl.received.store(out.dec.ids.len(), Relaxed);
        pending.clear();
    }
}

fn ws_message(m: &WsMsg, dec: &mut Decoded, channel: &str) -> Res<()> {
    let v: Value = serde_json::from_slice(&m.payload).map_err(|e| {
        format!(
            "message is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&m.payload)
        )
    })?;
    if m.compressed && dec.first_inflated.is_none() {
        dec.first_inflated = Some(String::from_utf8_lossy(&m.payload).into_owned());
    }
    match v["type"].as_str() {
        Some("subscribed") => dec.ready = true,
        Some("message") => {
            dec.messages += 1;
            dec.compressed += u64::from(m.compressed);
            dec.message(&v, channel);
            dec.texts.push(m.payload.clone());
        }
        Some("batch") => {
            dec.messages += 1;
            dec.batches += 1;
            dec.compressed += u64::from(m.compressed);
            for e in v["events"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                if e["type"] != "message" {
                    dec.error(format!("batch holds a non-message: {e}"));
                }
                dec.message(e, channel);
                dec.texts.push(e.to_string().into_bytes());
            }
        }
        _ => dec.error(format!("unexpected message {v}")),
    }
    Ok(())
}

/// Deflates `texts` one after another with one context, each ended by a sync flush:
/// what a compressor that keeps its context per connection would send.
fn context_deflate_sizes(texts: &[Vec<u8>]) -> Vec<usize> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(1 << 16);
    texts
        .iter()
        .map(|t| {
            out.clear();
            out.reserve(t.len() * 2 + 64);
            let before = c.total_out();
            let _ = c.compress_vec(t, &mut out, FlushCompress::Sync);
            (c.total_out() - before) as usize
        })
        .collect()
}

fn ws_header_len(payload: usize) -> usize {
    match payload {
        n if n < 126 => 2,
        n if n < 65536 => 4,
        _ => 10,
    }
}

struct BytesRun {
    label: String,
    published: Vec<u64>,
    data_bytes: u64,
    clients: Vec<ClientOut>,
    m0: HashMap<String, f64>,
    m1: HashMap<String, f64>,
    secs: f64,
}

/// Subscribes one client of each of `variants`, publishes `n` trades at `rate`, waits
/// until every client has them all, and collects what each saw.
fn bytes_phase(
    srv: &mut Server,
    a: &Args,
    variants: &[Variant],
    n: usize,
    label: &str,
    seed: u64,
) -> Res<BytesRun> {
    let addr = srv.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let (rtx, rrx) = crossbeam_channel::unbounded();
    let mut handles: Vec<(JoinHandle<ClientOut>, Arc<AtomicUsize>)> = Vec::new();
    for &v in variants {
        let received = Arc::new(AtomicUsize::new(0));
        let ctl = ClientCtl {
            ready: rtx.clone(),
            received: received.clone(),
            stop: stop.clone(),
        };
        let channel = a.channel.clone();
        let h = thread::Builder::new()
            .name(v.name.into())
            .spawn(move || bytes_client(v, addr, &channel, n, ctl))
            .map_err(|e| e.to_string())?;
        handles.push((h, received));
    }
    let finish = |stop: &AtomicBool, handles: Vec<(JoinHandle<ClientOut>, Arc<AtomicUsize>)>| {
        stop.store(true, Relaxed);
        handles
            .into_iter()
            .filter_map(|(h, _)| h.join().ok())
            .collect::<Vec<_>>()
    };
    let until = Instant::now() + Duration::from_secs(10);
    for _ in variants {
        let r = rrx
            .recv_deadline(until)
            .map_err(|_| "a client was not subscribed within 10 s".to_string())
            .and_then(|r| r);
        if let Err(e) = r {
            finish(&stop, handles);
            return Err(e);
        }
    }
    let m0 = metrics(addr)?;
    let mut p = KeepAlive::connect(addr)?;
    let mut trades = Trades::new(seed);
    let mut published = Vec::with_capacity(n);
    let mut data_bytes = 0u64;
    let t0 = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(a.rate.max(1)));
    let mut err = None;
    for i in 0..n {
        if let Some(d) = (t0 + period * i as u32).checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
        let data = trades.next();
        data_bytes += data.len() as u64;
        let r = interrupted()
            .and_then(|_| p.send(&publish_request(&a.channel, &data)))
            .and_then(|_| p.publish_answer());
        match r {
            Ok(id) => published.push(id),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if let Some(e) = err {
        finish(&stop, handles);
        return Err(e);
    }
    // Every client should have everything within a few batch windows.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until && handles.iter().any(|(_, r)| r.load(Relaxed) < n) {
        thread::sleep(Duration::from_millis(10));
    }
    let m1 = metrics(addr)?;
    let clients = finish(&stop, handles);
    srv.check_alive()?;
    Ok(BytesRun {
        label: label.to_string(),
        published,
        data_bytes,
        clients,
        m0,
        m1,
        secs,
    })
}

fn check_ids(c: &ClientOut, published: &[u64]) -> String {
    if c.dec.ids == published {
        return "ok".into();
    }
    let got: std::collections::HashSet<u64> = c.dec.ids.iter().copied().collect();
    let missing = published.iter().filter(|i| !got.contains(i)).count();
    let dups = c.dec.ids.len() - got.len();
    format!(
        "got {} of {} (missing {missing}, duplicates {dups}{})",
        c.dec.ids.len(),
        published.len(),
        if missing == 0 && dups == 0 {
            ", out of order"
        } else {
            ""
        }
    )
}

fn report_bytes(run: &BytesRun, a: &Args, json_lines: &mut Vec<Value>) -> bool {
    let n = run.published.len();
    let mut ok = true;
    println!(
        "\n== bytes on the wire: {} ({} trades on {} at {}/s over {:.2} s, data JSON {:.1} B/event) ==",
        run.label,
        n,
        a.channel,
        a.rate,
        run.secs,
        run.data_bytes as f64 / n.max(1) as f64
    );
    println!(
        "{}",
        header(&[
            ("variant", -18),
            ("events", 6),
            ("B/event", 9),
            ("vs sse", 8),
            ("reads", 7),
            ("ev/rd", 6),
            ("frames", 8),
            ("compressed", 10),
            (" all events?", 0)
        ])
    );
    let plain = run
        .clients
        .iter()
        .find(|c| c.v.name == "sse")
        .map(|c| c.bytes as f64 / c.dec.ids.len().max(1) as f64);
    for c in &run.clients {
        let events = c.dec.ids.len();
        let per = c.bytes as f64 / events.max(1) as f64;
        let check = check_ids(c, &run.published);
        let mut note = check.clone();
        if !c.dec.errors.is_empty() {
            note.push_str(&format!("; errors: {}", c.dec.errors.join(" | ")));
        }
        if check != "ok" || !c.dec.errors.is_empty() {
            ok = false;
        }
        let frames = if c.v.ws {
            c.dec.messages.to_string()
        } else {
            "-".into()
        };
        let compressed = if c.v.ws {
            format!("{}/{}", c.dec.compressed, c.dec.messages)
        } else if c.v.compress {
            "gzip".into()
        } else {
            "-".into()
        };
        println!(
            "{:<18} {:>6} {:>9.1} {:>7.0}% {:>7} {:>6.2} {:>8} {:>10}  {}",
            c.v.name,
            events,
            per,
            plain.map(|p| per / p * 100.0).unwrap_or(0.0),
            c.reads,
            events as f64 / c.reads.max(1) as f64,
            frames,
            compressed,
            note
        );
        json_lines.push(json!({
            "bench": "wire", "scenario": "bytes", "config": run.label, "variant": c.v.name,
            "events_published": n, "events_received": events, "all_events": check == "ok",
            "bytes_after_head": c.bytes, "bytes_before_ready": c.pre_bytes,
            "bytes_per_event": round(per, 1),
            "bytes_per_event_after_ready": round((c.bytes - c.pre_bytes) as f64 / events.max(1) as f64, 1),
            "reads": c.reads, "events_per_read": round(events as f64 / c.reads.max(1) as f64, 2),
            "ws_messages": c.dec.messages, "ws_compressed": c.dec.compressed, "ws_batches": c.dec.batches,
            "extensions": c.extensions, "errors": c.dec.errors,
            "rate": a.rate, "window_ms": a.window_ms,
            "data_json_bytes_per_event": round(run.data_bytes as f64 / n.max(1) as f64, 1),
        }));
    }
    // What a per-connection compressor keeping its context would send (computed here).
    let mut refs = Vec::new();
    if let Some(c) = run.clients.iter().find(|c| c.v.name == "sse") {
        let sizes = context_deflate_sizes(&c.dec.texts);
        let total: usize = sizes.iter().sum::<usize>() + 10;
        refs.push(("sse, gzip keeping context (computed)", total, sizes.len()));
    }
    if let Some(c) = run.clients.iter().find(|c| c.v.name == "ws") {
        let sizes = context_deflate_sizes(&c.dec.texts);
        let total: usize = sizes.iter().map(|s| s - 4 + ws_header_len(s - 4)).sum();
        refs.push(("ws, deflate keeping context (computed)", total, sizes.len()));
    }
    for (name, total, events) in refs {
        let per = total as f64 / events.max(1) as f64;
        println!(
            "{:<18} {:>6} {:>9.1} {:>7.0}%   (not sent by redix: {name})",
            "  reference",
            events,
            per,
            plain.map(|p| per / p * 100.0).unwrap_or(0.0)
        );
        json_lines.push(json!({
            "bench": "wire", "scenario": "bytes", "config": run.label, "variant": "reference",
            "what": name, "events": events, "bytes_per_event": round(per, 1),
        }));
    }
    if let Some(c) = run
        .clients
        .iter()
        .find(|c| c.v.compress && c.v.ws && c.dec.first_inflated.is_some())
    {
        let s = c.dec.first_inflated.as_deref().unwrap_or("");
        println!(
            "first inflated frame ({}): {}",
            c.v.name,
            &s[..s.len().min(160)]
        );
    }
    for c in run.clients.iter().filter(|c| c.v.ws && c.v.compress) {
        println!("{}: Sec-WebSocket-Extensions: {}", c.v.name, c.extensions);
    }
    let d = |k: &str| delta(&run.m0, &run.m1, k);
    let (calls, written) = (
        d("redix_write_calls_total"),
        d("redix_events_written_total"),
    );
    println!(
        "redix over the phase: redix_write_calls_total +{}, redix_events_written_total +{} ({:.2} events/call), \
         redix_bytes_written_total +{}, redix_ws_compressions_total +{}, redix_sse_gzip_compressions_total +{}, \
         redix_http_requests_total +{}",
        calls,
        written,
        written / calls.max(1.0),
        d("redix_bytes_written_total"),
        d("redix_ws_compressions_total"),
        d("redix_sse_gzip_compressions_total"),
        d("redix_http_requests_total"),
    );
    json_lines.push(json!({
        "bench": "wire", "scenario": "bytes", "config": run.label, "variant": "all (server counters)",
        "write_calls": calls, "events_written": written, "bytes_written": d("redix_bytes_written_total"),
        "ws_compressions": d("redix_ws_compressions_total"),
        "sse_gzip_compressions": d("redix_sse_gzip_compressions_total"),
        "http_requests": d("redix_http_requests_total"),
    }));
    ok
}

/// Each variant alone (and nobody, for the publisher's own writes): redix's write counters.
fn per_variant(srv: &mut Server, a: &Args, label: &str, json_lines: &mut Vec<Value>) -> Res<bool> {
    let n = ((a.per_variant_secs * f64::from(a.rate)).round() as usize).max(1);
    println!(
        "\n-- {label}: each variant alone, {n} trades at {}/s: redix's counters (Δ over the phase) --",
        a.rate
    );
    println!(
        "{}",
        header(&[
            ("variant", -18),
            ("write calls", 11),
            ("events written", 14),
            ("bytes written", 12),
            ("calls − baseline", 16),
            ("events/call", 12)
        ])
    );
    let mut baseline = None;
    let mut ok = true;
    let none: [Variant; 0] = [];
    for (i, set) in std::iter::once(&none[..])
        .chain(VARIANTS.iter().map(std::slice::from_ref))
        .enumerate()
    {
        interrupted()?;
        let name = set.first().map(|v| v.name).unwrap_or("(none)");
        let run = bytes_phase(srv, a, set, n, label, 7 + i as u64)?;
        let d = |k: &str| delta(&run.m0, &run.m1, k);
        let (calls, written, bytes) = (
            d("redix_write_calls_total"),
            d("redix_events_written_total"),
            d("redix_bytes_written_total"),
        );
        let base = *baseline.get_or_insert(calls);
        let client_calls = calls - base;
        let all = run
            .clients
            .iter()
            .all(|c| check_ids(c, &run.published) == "ok" && c.dec.errors.is_empty());
        ok &= all;
        println!(
            "{:<18} {:>11} {:>14} {:>12} {:>16} {:>12}{}",
            name,
            calls,
            written,
            thousands(bytes),
            client_calls,
            if set.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2}", n as f64 / client_calls.max(1.0))
            },
            if all {
                ""
            } else {
                "  (client did not get every event!)"
            }
        );
        json_lines.push(json!({
            "bench": "wire", "scenario": "bytes_alone", "config": label, "variant": name,
            "events_published": n, "write_calls": calls, "events_written": written,
            "bytes_written": bytes, "write_calls_minus_baseline": client_calls,
            "published_events_per_client_write": if set.is_empty() { Value::Null } else { json!(round(n as f64 / client_calls.max(1.0), 2)) },
            "all_events": all,
        }));
    }
    Ok(ok)
}

fn run_bytes(a: &Args, json_lines: &mut Vec<Value>) -> Res<bool> {
    let n = ((a.secs * f64::from(a.rate)).round() as usize).max(1);
    let window = format!("batch.window_ms={}", a.window_ms);
    let mut ok = true;
    for (label, extra) in [
        ("ws.deflate_min_bytes=default(256)", None),
        ("ws.deflate_min_bytes=0", Some("ws.deflate_min_bytes=0")),
    ] {
        interrupted()?;
        let mut args = vec!["--set", window.as_str()];
        if let Some(e) = extra {
            args.extend(["--set", e]);
        }
        let mut srv = Server::start(a, &args)?;
        println!(
            "\nredix pid {} on {} with {}",
            srv.pid,
            srv.addr,
            srv.args.join(" ")
        );
        let run = bytes_phase(&mut srv, a, &VARIANTS, n, label, 42)?;
        ok &= report_bytes(&run, a, json_lines);
        if a.per_variant_secs > 0.0 {
            ok &= per_variant(&mut srv, a, label, json_lines)?;
        }
        println!("redix: {}", srv.stop());
    }
    Ok(ok)
}

// ---------------------------------------------------------------------------------------------
// Scenario 2: the cost of resume
// ---------------------------------------------------------------------------------------------

const REPLAY_CHANNEL: &str = "replay:bench";

/// Publishes `h` events of `size`-byte data, pipelined; returns (first id, last id, secs).
fn fill_history(addr: SocketAddr, h: u64, size: usize) -> Res<(u64, u64, f64)> {
    let mut p = KeepAlive::connect(addr)?;
    let mut trades = Trades::new(99);
    let t0 = Instant::now();
    let (mut first, mut last) = (0, 0);
    let mut sent = 0u64;
    const DEPTH: u64 = 256;
    while sent < h {
        interrupted()?;
        let k = DEPTH.min(h - sent);
        let mut reqs = Vec::with_capacity(k as usize * (size + 150));
        for i in 0..k {
            let t = trades.next();
            // {"seq":N,"trade":{...},"pad":"xx"} padded to `size` bytes.
            let base = format!(r#"{{"seq":{},"trade":{t},"pad":""}}"#, sent + i);
            let pad = size.saturating_sub(base.len());
            let data = format!(
                r#"{{"seq":{},"trade":{t},"pad":"{}"}}"#,
                sent + i,
                "x".repeat(pad)
            );
            reqs.extend_from_slice(&publish_request(REPLAY_CHANNEL, &data));
        }
        p.send(&reqs)?;
        for _ in 0..k {
            let id = p.publish_answer()?;
            if first == 0 {
                first = id;
            }
            if id <= last {
                return Err(format!("publish ids not increasing: {last} then {id}"));
            }
            last = id;
        }
        sent += k;
    }
    Ok((first, last, t0.elapsed().as_secs_f64()))
}

#[derive(Default, Debug)]
struct ReplayOut {
    events: u64,
    bytes: u64,
    reads: u64,
    resets: u64,
    first_id: u64,
    last_id: u64,
    order_errors: u64,
    first_byte: Option<Duration>,
    done: Option<Duration>,
    error: Option<String>,
}

struct ReplayCtl {
    ws: bool,
    addr: SocketAddr,
    h: u64,
    barrier: Arc<Barrier>,
    deadline: Instant,
    done: Arc<AtomicUsize>,
    release: Arc<AtomicBool>,
    idx: usize,
}

fn replay_client(ctl: ReplayCtl) -> ReplayOut {
    let mut out = ReplayOut::default();
    ctl.barrier.wait();
    let t0 = Instant::now();
    if let Err(e) = replay_inner(&ctl, &mut out, t0) {
        out.error = Some(e);
    }
    if out.done.is_none() {
        // Counted as finished (failed) so the main thread does not wait for it.
        ctl.done.fetch_add(1, Relaxed);
    }
    out
}

fn replay_inner(ctl: &ReplayCtl, out: &mut ReplayOut, t0: Instant) -> Res<()> {
    let key = ws_key(ctl.idx);
    let request = if ctl.ws {
        ws_upgrade_request("/ws", &key, false)
    } else {
        format!(
            "GET /api/stream?channels={REPLAY_CHANNEL}&lastEventId=0 HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
        )
        .into_bytes()
    };
    let (mut s, head, rest) = open(ctl.addr, &request, Duration::from_millis(200))?;
    if ctl.ws {
        check_upgrade(&head, &key, false)?;
        let sub = format!(r#"{{"type":"subscribe","channel":"{REPLAY_CHANNEL}","since":"0"}}"#);
        s.write_all(&ws_client_frame(1, sub.as_bytes()))
            .map_err(|e| format!("subscribe: {e}"))?;
    } else if status_of(&head) != 200 {
        return Err(format!("stream refused: {head:?}"));
    }
    let prefix = format!(r#"{{"type":"message","channel":"{REPLAY_CHANNEL}","id":""#).into_bytes();
    let mut buf = vec![0u8; 1 << 18];
    let mut partial: Vec<u8> = Vec::new();
    let mut ws = WsIn::default();
    let mut pending = rest;
    let on_id = |out: &mut ReplayOut, id: Option<u64>| match id {
        Some(id) => {
            if out.first_id == 0 {
                out.first_id = id;
            }
            if id <= out.last_id {
                out.order_errors += 1;
            }
            out.last_id = id;
            out.events += 1;
        }
        None => out.order_errors += 1,
    };
    loop {
        let chunk: &[u8] = if !pending.is_empty() {
            &pending
        } else {
            if out.done.is_some() && ctl.release.load(Relaxed) {
                return Ok(());
            }
            if out.done.is_none() && Instant::now() > ctl.deadline {
                return Err(format!("timed out with {} of {} events", out.events, ctl.h));
            }
            match s.read(&mut buf) {
                Ok(0) => return Err(format!("closed by redix after {} events", out.events)),
                Ok(k) => &buf[..k],
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        };
        if out.first_byte.is_none() {
            out.first_byte = Some(t0.elapsed());
        }
        out.bytes += chunk.len() as u64;
        out.reads += 1;
        if ctl.ws {
            // Frame by frame; an event's id is read straight after the fixed prefix.
            for m in ws.feed(chunk)? {
                match m.opcode {
                    1 if m.payload.starts_with(&prefix) => {
                        let rest = &m.payload[prefix.len()..];
                        let end = rest.iter().position(|&b| b == b'"').unwrap_or(0);
                        on_id(out, parse_u64(&rest[..end]));
                    }
                    1 => {
                        let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                        match v["type"].as_str() {
                            Some("subscribed") => {}
                            Some("reset") => out.resets += 1,
                            _ => return Err(format!("unexpected message {v}")),
                        }
                    }
                    9 => {
                        let _ = s.write_all(&ws_client_frame(10, &m.payload));
                    }
                    8 => return Err(format!("close frame {:?}", m.payload)),
                    _ => {}
                }
            }
        } else {
            // Line by line: count `id:` lines (checking they increase) and `event: reset`.
            let mut line_start = 0;
            for (i, &b) in chunk.iter().enumerate() {
                if b != b'\n' {
                    continue;
                }
                let line: &[u8] = if partial.is_empty() {
                    &chunk[line_start..i]
                } else {
                    partial.extend_from_slice(&chunk[line_start..i]);
                    &partial
                };
                if let Some(id) = line.strip_prefix(b"id: ") {
                    let id = parse_u64(id);
                    on_id(out, id);
                } else if line == b"event: reset" {
                    out.resets += 1;
                }
                partial.clear();
                line_start = i + 1;
            }
            partial.extend_from_slice(&chunk[line_start..]);
        }
        pending.clear();
        if out.done.is_none() && out.events >= ctl.h {
            out.done = Some(t0.elapsed());
            ctl.done.fetch_add(1, Relaxed);
        }
    }
}

struct ReplayResult {
    transport: &'static str,
    k: usize,
    h: u64,
    secs: f64,
    server_cpu: f64,
    server_sys: f64,
    bench_cpu: f64,
    write_calls: f64,
    rss_before: u64,
    rss_after: u64,
    rss_closed: u64,
    hwm: u64,
    replayed: f64,
    complete: usize,
    bytes: u64,
    reads: u64,
    resets: u64,
    order_errors: u64,
    first_byte_ms: (f64, f64),
    errors: Vec<String>,
}

fn replay_phase(srv: &mut Server, a: &Args, ws: bool, last_id: u64) -> Res<ReplayResult> {
    let k = a.clients;
    let h = a.events;
    let barrier = Arc::new(Barrier::new(k + 1));
    let done = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(a.replay_timeout_secs);
    let rss_before = rss_kib(srv.pid)?;
    let m0 = metrics(srv.addr)?;
    let mut handles = Vec::with_capacity(k);
    for idx in 0..k {
        let ctl = ReplayCtl {
            ws,
            addr: srv.addr,
            h,
            barrier: barrier.clone(),
            deadline,
            done: done.clone(),
            release: release.clone(),
            idx,
        };
        match thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || replay_client(ctl))
        {
            Ok(hd) => handles.push(hd),
            Err(e) => {
                // The barrier would never open: let nobody wait on it.
                return Err(format!(
                    "spawning client {idx}: {e} (the bench cannot go on)"
                ));
            }
        }
    }
    let cpu0 = cpu_secs(srv.pid)?;
    let bench0 = self_cpu_secs();
    barrier.wait();
    let t0 = Instant::now();
    while done.load(Relaxed) < k && Instant::now() < deadline + Duration::from_secs(1) {
        thread::sleep(Duration::from_millis(2));
        if INTERRUPTED.load(Relaxed) {
            break;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_secs(srv.pid)?;
    let bench1 = self_cpu_secs();
    let rss_after = rss_kib(srv.pid)?;
    let hwm = status_kib(srv.pid, "VmHWM:")?;
    let m1 = metrics(srv.addr)?;
    release.store(true, Relaxed);
    let outs: Vec<ReplayOut> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
    // Let redix notice the closes, then see what memory it kept.
    let gauge = format!(
        "redix_connections{{transport=\"{}\"}}",
        if ws { "ws" } else { "sse" }
    );
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if metrics(srv.addr)?.get(&gauge).copied().unwrap_or(0.0) == 0.0 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(200));
    let rss_closed = rss_kib(srv.pid)?;
    srv.check_alive()?;
    let complete: Vec<&ReplayOut> = outs
        .iter()
        .filter(|o| {
            o.done.is_some() && o.events == h && o.last_id == last_id && o.order_errors == 0
        })
        .collect();
    // The replay ends when the last client has its last event.
    let secs = outs
        .iter()
        .filter_map(|o| o.done)
        .max()
        .map(|d| d.as_secs_f64())
        .unwrap_or(wall);
    let mut fb: Vec<f64> = outs
        .iter()
        .filter_map(|o| o.first_byte.map(|d| d.as_secs_f64() * 1e3))
        .collect();
    fb.sort_by(f64::total_cmp);
    let mut errors: Vec<String> = outs.iter().filter_map(|o| o.error.clone()).collect();
    if outs.len() < k {
        errors.push(format!("{} client threads panicked", k - outs.len()));
    }
    for o in outs
        .iter()
        .filter(|o| o.error.is_none() && o.last_id != last_id)
    {
        errors.push(format!(
            "a client ended at id {} (last published {last_id})",
            o.last_id
        ));
    }
    errors.truncate(5);
    Ok(ReplayResult {
        transport: if ws { "ws" } else { "sse" },
        k,
        h,
        secs,
        server_cpu: (cpu1.0 + cpu1.1) - (cpu0.0 + cpu0.1),
        server_sys: cpu1.1 - cpu0.1,
        bench_cpu: bench1 - bench0,
        write_calls: delta(&m0, &m1, "redix_write_calls_total"),
        rss_before,
        rss_after,
        rss_closed,
        hwm,
        replayed: delta(&m0, &m1, "redix_replayed_total"),
        complete: complete.len(),
        bytes: outs.iter().map(|o| o.bytes).sum(),
        reads: outs.iter().map(|o| o.reads).sum(),
        resets: outs.iter().map(|o| o.resets).sum(),
        order_errors: outs.iter().map(|o| o.order_errors).sum(),
        first_byte_ms: (
            fb.first().copied().unwrap_or(0.0),
            fb.last().copied().unwrap_or(0.0),
        ),
        errors,
    })
}

fn run_resume(a: &Args, json_lines: &mut Vec<Value>) -> Res<bool> {
    let args = [
        "--set",
        "history.max_events=100000",
        "--sse-per-ip",
        "100000",
        "--set",
        "limits.ws_per_ip=100000",
        "--set",
        "queue.max_events=200000",
        "--set",
        "queue.max_bytes=268435456",
    ];
    let mut srv = Server::start(a, &args)?;
    println!(
        "\nredix pid {} on {} with {}",
        srv.pid,
        srv.addr,
        srv.args.join(" ")
    );
    let rss_empty = rss_kib(srv.pid)?;
    let (first, last, secs) = fill_history(srv.addr, a.events, a.payload_bytes)?;
    let m = metrics(srv.addr)?;
    let hist = m.get("redix_history_events").copied().unwrap_or(-1.0);
    let hist_bytes = m.get("redix_history_bytes").copied().unwrap_or(-1.0);
    println!(
        "\n== the cost of resume: H = {} events ({}-byte data) in history, K = {} clients at once ==",
        a.events, a.payload_bytes, a.clients
    );
    println!(
        "published {} events in {:.2} s pipelined ({} events/s), ids {first}..{last}; \
         redix_history_events {hist}, redix_history_bytes {}; VmRSS {} KiB empty → {} KiB with the history",
        a.events,
        secs,
        thousands(a.events as f64 / secs),
        thousands(hist_bytes),
        thousands(rss_empty as f64),
        thousands(rss_kib(srv.pid)? as f64),
    );
    let mut ok = hist == a.events as f64;
    if !ok {
        println!("!! redix_history_events is {hist}, expected {}", a.events);
    }
    let transports: &[bool] = match a.transport {
        TransportSel::Sse => &[false],
        TransportSel::Ws => &[true],
        TransportSel::Both => &[false, true],
    };
    println!(
        "{}",
        header(&[
            ("", -4),
            ("complete", 9),
            ("time s", 8),
            ("replayed ev/s", 13),
            ("srv CPU s", 10),
            ("srv CPU%", 9),
            ("ns CPU/ev", 11),
            ("MB/s", 9),
            ("VmRSS KiB bef→aft", 20),
            ("after close", 10),
            ("bench CPU", 9),
            ("replayed", 9)
        ])
    );
    let mut results = Vec::new();
    for &ws in transports {
        interrupted()?;
        let r = replay_phase(&mut srv, a, ws, last)?;
        let total = r.k as f64 * r.h as f64;
        let good = r.complete == r.k && r.replayed == total && r.resets == 0 && r.errors.is_empty();
        ok &= good;
        println!(
            "{:<4} {:>5}/{:<3} {:>8.2} {:>13} {:>10.2} {:>8.0}% {:>11.0} {:>9.0} {:>20} {:>10} {:>8.2}s {:>9}{}",
            r.transport,
            r.complete,
            r.k,
            r.secs,
            thousands(total / r.secs),
            r.server_cpu,
            r.server_cpu / r.secs * 100.0,
            r.server_cpu / total * 1e9,
            r.bytes as f64 / r.secs / 1e6,
            format!(
                "{}→{}",
                thousands(r.rss_before as f64),
                thousands(r.rss_after as f64)
            ),
            thousands(r.rss_closed as f64),
            r.bench_cpu,
            thousands(r.replayed),
            if r.replayed == total {
                String::new()
            } else {
                format!("  (expected {})", thousands(total))
            }
        );
        results.push(r);
    }
    for r in &results {
        println!(
            "{}: peak VmRSS so far (VmHWM) {} KiB; server CPU {:.2} s of which kernel {:.2} s; redix_write_calls_total +{} ({:.0} events/call); \
             {} bytes read ({:.0} B/event), {} reads ({:.0} KiB/read), first byte after {:.1}..{:.1} ms, \
             resets {}, order errors {}{}",
            r.transport,
            thousands(r.hwm as f64),
            r.server_cpu,
            r.server_sys,
            r.write_calls,
            r.k as f64 * r.h as f64 / r.write_calls.max(1.0),
            thousands(r.bytes as f64),
            r.bytes as f64 / (r.k as f64 * r.h as f64),
            thousands(r.reads as f64),
            r.bytes as f64 / r.reads.max(1) as f64 / 1024.0,
            r.first_byte_ms.0,
            r.first_byte_ms.1,
            r.resets,
            r.order_errors,
            if r.errors.is_empty() {
                String::new()
            } else {
                format!("; errors: {}", r.errors.join(" | "))
            }
        );
        let total = r.k as f64 * r.h as f64;
        json_lines.push(json!({
            "bench": "wire", "scenario": "resume", "transport": r.transport,
            "clients": r.k, "history_events": r.h, "payload_bytes": a.payload_bytes,
            "clients_complete": r.complete, "secs": round(r.secs, 3),
            "replayed_events_per_sec": round(total / r.secs, 0),
            "server_cpu_secs": round(r.server_cpu, 2),
            "server_sys_secs": round(r.server_sys, 2),
            "write_calls": r.write_calls,
            "server_cpu_ns_per_event": round(r.server_cpu / total * 1e9, 1),
            "bench_cpu_secs": round(r.bench_cpu, 2),
            "rss_kib_before": r.rss_before, "rss_kib_after": r.rss_after, "rss_kib_after_close": r.rss_closed, "vm_hwm_kib": r.hwm,
            "redix_replayed_total_delta": r.replayed, "expected_replayed": total,
            "bytes_read": r.bytes, "reads": r.reads, "resets": r.resets, "order_errors": r.order_errors,
            "first_byte_ms_min": round(r.first_byte_ms.0, 1), "first_byte_ms_max": round(r.first_byte_ms.1, 1),
            "errors": r.errors,
            "publish_events_per_sec": round(a.events as f64 / secs, 0),
        }));
    }
    println!("redix: {}", srv.stop());
    Ok(ok)
}

fn run(a: &Args) -> Res<bool> {
    let mut json_lines = Vec::new();
    let mut ok = true;
    if matches!(a.scenario, ScenarioSel::Bytes | ScenarioSel::All) {
        ok &= run_bytes(a, &mut json_lines)?;
    }
    if matches!(a.scenario, ScenarioSel::Resume | ScenarioSel::All) {
        ok &= run_resume(a, &mut json_lines)?;
    }
    println!();
    for v in &json_lines {
        println!("{v}");
    }
    Ok(ok)
}

fn main() {
    let args = Args::parse();
    install_signal_handlers();
    start_watchdog(Duration::from_secs(args.max_secs));
    let mut summary = String::new();
    let code = match run(&args) {
        Ok(true) => 0,
        Ok(false) => {
            let _ = write!(summary, "wire: some checks failed (see above)");
            1
        }
        Err(e) => {
            let _ = write!(summary, "wire: {e}");
            2
        }
    };
    if !summary.is_empty() {
        eprintln!("{summary}");
    }
    std::process::exit(code);
}
