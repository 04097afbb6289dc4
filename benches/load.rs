//! Load benchmark for redix (and nchan, its peer), as described in BENCHMARKS.md.
//!
//! `cargo bench --bench load -- [--target redix|nchan|both] [--transport sse|ws|both]
//!  [--scenario idle|fanout|all] [--mode embedded|redis|both] [--plan SUBSxRATE,...] ...`
//!
//! Every scenario runs over SSE, over WebSocket, or both (`--transport`, default both; each
//! server × transport gets a freshly started server, the same binary).
//!
//! * idle: N SSE connections to one channel; server RSS per idle connection
//!   ((VmRSS after − VmRSS before) / N, from /proc/PID/status) and the client-side
//!   connection setup rate (TCP connect + request + response headers, plus redix's
//!   first `retry:` line).
//! * fanout: S subscribers on one channel, a publisher at E events/s for D seconds with
//!   ~100-byte payloads carrying `"t":<ns since epoch>`; publish→receive latency
//!   histogram, deliveries/s, loss, and server CPU per delivery
//!   (Δ utime+stime from /proc/PID/stat / deliveries received).
//! * WebSocket (`--transport ws`): the mio loops do the client handshake themselves (GET with
//!   `Upgrade: websocket` and a random key, the `101` and its `Sec-WebSocket-Accept` checked),
//!   then for redix send a masked `{"type":"subscribe","channel":…}` text frame; a connection
//!   is ready at the `subscribed` ack (nchan: at the `101`, `GET /sub/CH` subscribes). Server
//!   frames are parsed incrementally (7/16/64-bit lengths, split across reads, several per
//!   read, fragmented messages), pings are answered with masked pongs, `"t"` is taken from
//!   each text message. Publishing is the same HTTP publisher as for SSE.
//!
//! * Redis mode (`--mode redis`, or `--mode both` for embedded and Redis side by side): the
//!   bench starts its own `redis-server` on a free loopback port and `--redis-nodes` (2) redix
//!   nodes with `--redis redis://127.0.0.1:PORT` (`--redis-node-workers` reactors each), waits
//!   for `/readyz` 200 on every node, splits the subscribers evenly over the nodes (connection
//!   i → node i mod N) and publishes to node A; deliveries, loss and latency are reported in
//!   total and per node, CPU per delivery per node and for the redix nodes together, plus
//!   redis-server's CPU. `--plan 1000x20,10000x100` pairs subscriber counts with rates.
//!
//! The generator runs one mio event loop per thread (2 threads by default), non-blocking
//! sockets bound to source addresses 127.0.0.2, 127.0.0.3, … (so the ephemeral port range
//! is per source address), latencies go into a fixed log-linear histogram. The publisher is a
//! keep-alive HTTP/1.1 client on its own thread with deadline-based pacing. Everything is
//! bounded in time; servers it starts are stopped on exit (and get PR_SET_PDEATHSIG).
//! Load only ever goes to 127.0.0.0/8.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream as StdTcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};
use serde_json::{json, Value};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TargetSel {
    Redix,
    Nchan,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TransportSel {
    Sse,
    Ws,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Sse,
    Ws,
}

impl Transport {
    /// for JSON and table labels
    fn tag(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
        }
    }
    /// for the text output
    fn long(self) -> &'static str {
        match self {
            Transport::Sse => "SSE",
            Transport::Ws => "WebSocket",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ScenarioSel {
    Idle,
    Fanout,
    All,
}

/// redix's mode (nchan is always one server)
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeSel {
    /// one redix process, in-memory hub
    Embedded,
    /// a redis-server and --redis-nodes redix nodes using it (`--redis`)
    Redis,
    /// embedded first, then Redis mode, same scenarios
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Embedded,
    Redis,
}

impl Mode {
    fn tag(self) -> &'static str {
        match self {
            Mode::Embedded => "embedded",
            Mode::Redis => "redis",
        }
    }
}

/// One fanout run: this many subscribers, this many events/s.
#[derive(Clone, Copy, Debug, PartialEq)]
struct SubRate {
    subs: usize,
    rate: f64,
}

fn parse_sub_rate(s: &str) -> Result<SubRate, String> {
    let (n, r) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?}: expected SUBSxRATE, e.g. 1000x20"))?;
    let subs = n
        .trim()
        .parse()
        .map_err(|e| format!("{s:?}: subscribers: {e}"))?;
    let rate: f64 = r.trim().parse().map_err(|e| format!("{s:?}: rate: {e}"))?;
    if subs == 0 || rate.is_nan() || rate <= 0.0 {
        return Err(format!("{s:?}: subscribers and rate must be > 0"));
    }
    Ok(SubRate { subs, rate })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum NchanStart {
    /// use nchan if something already listens on --nchan-addr, else start it
    Auto,
    /// always start our own nginx (fails if --nchan-addr is taken)
    Always,
    /// never start it; it must already be running
    Never,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "load",
    about = "redix / nchan SSE and WebSocket load benchmark (loopback only)"
)]
struct Args {
    /// which server(s) to measure; `both` runs the same scenarios against each in turn
    #[arg(long, value_enum, default_value = "both")]
    target: TargetSel,
    /// SSE, WebSocket (redix `/ws`, nchan `/sub/CH` upgraded), or both; every server × transport
    /// is a freshly started server
    #[arg(long, value_enum, default_value = "both")]
    transport: TransportSel,
    #[arg(long, value_enum, default_value = "all")]
    scenario: ScenarioSel,
    /// redix binary to start; default: the one cargo built alongside this bench
    /// (CARGO_BIN_EXE_redix), else target/release/redix (cargo bench runs in the crate root)
    #[arg(long, env = "REDIX_BIN", default_value_os_t = default_redix_bin())]
    redix_bin: PathBuf,
    /// value of redix --workers
    #[arg(long, default_value_t = 2)]
    redix_workers: usize,
    /// extra argument passed to redix (repeatable; to every node in Redis mode)
    #[arg(long = "redix-arg", allow_hyphen_values = true)]
    redix_args: Vec<String>,
    /// redix in embedded mode (one process), in Redis mode (own redis-server + --redis-nodes
    /// nodes, subscribers split evenly, publishes to the first node), or both in turn
    #[arg(long, value_enum, default_value = "embedded")]
    mode: ModeSel,
    /// Redis mode: number of redix nodes sharing the redis-server
    #[arg(long, default_value_t = 2)]
    redis_nodes: usize,
    /// Redis mode: value of --workers for each node
    #[arg(long, default_value_t = 1)]
    redis_node_workers: usize,
    /// Redis mode: the redis-server binary (Debian package redis-server)
    #[arg(long, default_value = "redis-server")]
    redis_server_bin: PathBuf,
    /// where nchan listens (the peers' nchan.conf says 127.0.0.1:8801)
    #[arg(long, default_value = "127.0.0.1:8801")]
    nchan_addr: SocketAddrV4,
    #[arg(long, value_enum, default_value = "auto")]
    nchan_start: NchanStart,
    /// nchan.conf template (@WORKERS@ / @NOFILE@); default ../shared/peers/nchan.conf or /work/shared/peers/nchan.conf
    #[arg(long)]
    nchan_conf: Option<PathBuf>,
    #[arg(long, default_value = "nginx")]
    nginx_bin: PathBuf,
    /// idle: number of connections
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// fanout: number of subscribers
    #[arg(long, default_value_t = 1_000)]
    subs: usize,
    /// fanout: publish rates (events/s), one run each
    #[arg(long, value_delimiter = ',', default_value = "20,1000")]
    rates: Vec<f64>,
    /// fanout: runs as SUBSxRATE pairs, e.g. 1000x20,1000x1000,10000x20,10000x100; replaces
    /// --subs × --rates
    #[arg(long, value_delimiter = ',', value_parser = parse_sub_rate)]
    plan: Vec<SubRate>,
    /// fanout: most keep-alive connections the publisher keeps requests in flight on
    #[arg(long, default_value_t = 16)]
    pub_conns: usize,
    /// fanout: seconds of publishing per rate
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// size of the published JSON object {"t":…,"pad":"…"} in bytes
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    #[arg(long, default_value = "bench")]
    channel: String,
    /// generator event-loop threads (the publisher has its own)
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// client connections per source address (127.0.0.2, 127.0.0.3, …)
    #[arg(long, default_value_t = 2_000)]
    per_source: usize,
    /// connections being set up at once (all threads together)
    #[arg(long, default_value_t = 512)]
    connect_concurrency: usize,
    /// attempts per connection before it counts as failed
    #[arg(long, default_value_t = 3)]
    connect_attempts: u32,
    /// seconds an attempt may take from connect() to a ready stream
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// idle: seconds to wait for the server RSS to stop changing
    #[arg(long, default_value_t = 30.0)]
    settle_timeout: f64,
    /// fanout: seconds to wait after the last publish for deliveries to arrive
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// hard deadline per scenario (seconds)
    #[arg(long, default_value_t = 240.0)]
    deadline: f64,
    /// also append the JSON result lines to this file
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// run the whole scenario list this many times against the same server (shows RSS growth)
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// check the parsers and the histogram, then exit (no network)
    #[arg(long)]
    self_test: bool,
    /// passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

/// The fanout runs: --plan, else every --rates at --subs.
fn fanout_plan(a: &Args) -> Vec<SubRate> {
    if !a.plan.is_empty() {
        return a.plan.clone();
    }
    a.rates
        .iter()
        .map(|&rate| SubRate { subs: a.subs, rate })
        .collect()
}

fn default_redix_bin() -> PathBuf {
    PathBuf::from(option_env!("CARGO_BIN_EXE_redix").unwrap_or("target/release/redix"))
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Relaxed);
}

fn install_signal_handlers() {
    let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    unsafe {
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
        libc::signal(libc::SIGHUP, h);
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Relaxed)
}

fn raise_nofile() -> u64 {
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            if r.rlim_cur < r.rlim_max {
                r.rlim_cur = r.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &r);
            }
            return r.rlim_cur as u64;
        }
    }
    0
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last = hay.len() - needle.len();
    let mut i = 0;
    while i <= last {
        match hay[i..=last].iter().position(|&b| b == first) {
            None => return None,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// Position of the first `byte`, a word (8 bytes) at a time.
#[inline]
fn find_byte(s: &[u8], byte: u8) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pat = LO * byte as u64;
    let mut i = 0;
    while i + 8 <= s.len() {
        let w = u64::from_le_bytes(s[i..i + 8].try_into().unwrap()) ^ pat;
        let z = w.wrapping_sub(LO) & !w & HI;
        if z != 0 {
            return Some(i + (z.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    s[i..].iter().position(|&b| b == byte).map(|p| i + p)
}

#[inline]
fn find_nl(s: &[u8]) -> Option<usize> {
    find_byte(s, b'\n')
}

/// The value of `"t":<digits>` in a data line (hops from colon to colon).
#[inline]
fn parse_t(line: &[u8]) -> Option<u64> {
    let mut i = 0;
    let p = loop {
        let j = i + find_byte(&line[i..], b':')?;
        if j >= 3 && &line[j - 3..j] == b"\"t\"" {
            break j + 1;
        }
        i = j + 1;
    };
    let mut v: u64 = 0;
    let mut any = false;
    for &b in &line[p..] {
        match b {
            b'0'..=b'9' => {
                v = v.wrapping_mul(10).wrapping_add((b - b'0') as u64);
                any = true;
            }
            b' ' if !any => {}
            _ => break,
        }
    }
    any.then_some(v)
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
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

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

fn rss_kib(pid: i32) -> Res<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status (the process has exited)"))
}

/// Fields after the `(comm)` of /proc/PID/stat; index 0 is field 3 (state).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of the whole process (all threads), in clock ticks.
fn cpu_ticks(pid: i32) -> Res<u64> {
    let f = stat_fields(pid).ok_or_else(|| format!("cannot read /proc/{pid}/stat"))?;
    let u: u64 = f.get(11).and_then(|v| v.parse().ok()).ok_or("bad utime")?;
    let s: u64 = f.get(12).and_then(|v| v.parse().ok()).ok_or("bad stime")?;
    Ok(u + s)
}

/// (busy, total) jiffies of the whole box, from the `cpu` line of /proc/stat.
fn box_cpu() -> (u64, u64) {
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

fn box_busy_pct(a: (u64, u64), b: (u64, u64)) -> f64 {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    if b.1 > a.1 {
        (b.0 - a.0) as f64 / (b.1 - a.1) as f64 * 100.0 * cores
    } else {
        0.0
    }
}

fn clk_tck() -> f64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn alive(pid: i32) -> bool {
    match stat_fields(pid) {
        Some(f) => f.first().map(|s| s != "Z" && s != "X").unwrap_or(false),
        None => false,
    }
}

fn cmdline(pid: i32) -> String {
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

fn children_of(ppid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| stat_fields(p).and_then(|f| f.get(1)?.parse::<i32>().ok()) == Some(ppid))
        .collect()
}

/// Processes holding a listening TCP socket bound to `addr`.
fn listening_pids(addr: SocketAddrV4) -> Vec<i32> {
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
    let mut pids = Vec::new();
    if inodes.is_empty() {
        return pids;
    }
    for p in all_pids() {
        if let Ok(d) = fs::read_dir(format!("/proc/{p}/fd")) {
            let hit = d.filter_map(|e| e.ok()).any(|e| {
                fs::read_link(e.path())
                    .map(|l| inodes.iter().any(|i| l.as_os_str() == i.as_str()))
                    .unwrap_or(false)
            });
            if hit {
                pids.push(p);
            }
        }
    }
    pids
}

fn nginx_worker_of(master: i32) -> Vec<i32> {
    children_of(master)
        .into_iter()
        .filter(|&p| cmdline(p).contains("worker process"))
        .collect()
}

/// Does a Redis server on `addr` answer PING (raw RESP) within half a second?
fn redis_ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = StdTcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 64];
    s.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok()
        && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// Status of a `GET path` (one request, `Connection: close`, at most 2 s).
fn http_status(addr: SocketAddr, path: &str) -> Res<u16> {
    let mut s = StdTcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("GET {path}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).map_err(|e| format!("GET {path}: {e}"))?;
        buf.extend_from_slice(&chunk[..n]);
        match parse_response(&buf, n == 0) {
            Some(r) => return r.map(|(_, status, _)| status),
            None if n == 0 => return Err(format!("GET {path}: closed before a response")),
            None => {}
        }
    }
}

fn tail_file(p: &Path, lines: usize) -> String {
    let s = fs::read_to_string(p).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Latency histogram: log-linear, 32 sub-buckets per power of two (≤ 3.2 % bucket width), in µs
// ---------------------------------------------------------------------------------------------

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const NBUCKETS: usize = 64 * SUB as usize;

#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    n: u64,
    sum: u128,
    max: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; NBUCKETS],
            n: 0,
            sum: 0,
            max: 0,
        }
    }
    #[inline]
    fn index(v: u64) -> usize {
        if v < 2 * SUB {
            v as usize
        } else {
            let msb = 63 - v.leading_zeros();
            let e = msb - SUB_BITS;
            ((e as u64 * SUB + (v >> e)) as usize).min(NBUCKETS - 1)
        }
    }
    /// Highest value that falls into bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * SUB {
            i
        } else {
            let e = i / SUB - 1;
            let top = i % SUB + SUB;
            ((top + 1) << e) - 1
        }
    }
    #[inline]
    fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        self.sum += v as u128;
        if v > self.max {
            self.max = v;
        }
    }
    fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.sum += o.sum;
        self.max = self.max.max(o.max);
    }
    fn percentile(&self, p: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let target = ((p / 100.0) * self.n as f64).ceil().max(1.0) as u64;
        let mut c = 0;
        for (i, &k) in self.counts.iter().enumerate() {
            c += k;
            if c >= target {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }
    fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum as f64 / self.n as f64
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Redix,
    Nchan,
    /// the redis-server behind redix nodes in Redis mode (never a load target itself)
    Redis,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Redix => "redix",
            Kind::Nchan => "nchan",
            Kind::Redis => "redis-server",
        }
    }
}

struct Server {
    kind: Kind,
    addr: SocketAddr,
    /// the process measured (redix itself, or the nginx worker)
    pid: i32,
    /// what we started: redix, or the nginx master (run with `daemon off`)
    child: Option<Child>,
    extra_pids: Vec<i32>,
    dir: Option<PathBuf>,
    log: Option<PathBuf>,
    note: String,
    stopped: bool,
}

fn pdeathsig(cmd: &mut Command) {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// Spawns `cmd` (program `bin`) so that it dies with the bench; `hint` says
/// how to install it when it cannot start.
fn spawn_tied(cmd: &mut Command, bin: &Path, hint: &str) -> Res<std::process::Child> {
    pdeathsig(cmd);
    cmd.spawn()
        .map_err(|e| format!("spawn {}: {e}{hint}", bin.display()))
}

impl Server {
    /// One redix process. `node`: None for embedded mode; Some((i, redis URL)) for node i of
    /// a Redis-mode cluster (its own stderr file, `--redis`, `--redis-node-workers`).
    fn start_redix(a: &Args, tr: Transport, node: Option<(usize, &str)>) -> Res<Server> {
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
        let workers = match node {
            None => a.redix_workers,
            Some(_) => a.redis_node_workers,
        };
        let mut cmd = Command::new(bin);
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--workers",
            &workers.to_string(),
            "--sse-per-ip",
            "1000000",
        ])
        .args(node.into_iter().flat_map(|(_, url)| ["--redis", url]))
        // WebSockets per client IP default to 50; the generator puts 2,000 on each address.
        .args(match tr {
            Transport::Sse => &[][..],
            Transport::Ws => &["--set", "limits.ws_per_ip=1000000"][..],
        })
        .args(&a.redix_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(errf));
        // Quiet logs (redix reads REDIX_LOG) unless the caller chose a level.
        for var in ["REDIX_LOG", "RUST_LOG"] {
            if std::env::var_os(var).is_none() {
                cmd.env(var, "warn");
            }
        }
        let mut child = spawn_tied(&mut cmd, bin, "")?;
        let pid = child.id() as i32;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = crossbeam_channel::bounded::<SocketAddr>(1);
        // Reads the "listening" line, then keeps draining stdout so the pipe never fills.
        thread::Builder::new()
            .name("redix-stdout".into())
            .spawn(move || {
                let mut sent = false;
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if !sent {
                        if let Some(rest) = line.trim().strip_prefix("redix listening on ") {
                            if let Ok(addr) = rest.trim().parse::<SocketAddr>() {
                                let _ = tx.send(addr);
                                sent = true;
                            }
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?;
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
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => {
                    srv.addr = addr;
                    break;
                }
                Err(_) => {
                    // (printed on stdout; accepted on stderr too)
                    if let Some(addr) = fs::read_to_string(&log).ok().and_then(|t| {
                        t.lines().find_map(|l| {
                            l.split_once("redix listening on ")?
                                .1
                                .trim()
                                .parse::<SocketAddr>()
                                .ok()
                        })
                    }) {
                        srv.addr = addr;
                        break;
                    }
                    srv.check_alive()?;
                    if Instant::now() > until || interrupted() {
                        return Err(format!(
                            "redix did not print 'redix listening on ADDR' within 20 s; stderr tail:\n{}",
                            tail_file(&log, 20)
                        ));
                    }
                }
            }
        }
        Ok(srv)
    }

    fn nchan_conf_template(a: &Args) -> Res<PathBuf> {
        if let Some(p) = &a.nchan_conf {
            return Ok(p.clone());
        }
        for c in [
            "../shared/peers/nchan.conf",
            "shared/peers/nchan.conf",
            "/work/shared/peers/nchan.conf",
        ] {
            if Path::new(c).exists() {
                return Ok(PathBuf::from(c));
            }
        }
        Err("nchan.conf template not found; pass --nchan-conf".into())
    }

    fn start_nchan(a: &Args) -> Res<Server> {
        let addr = a.nchan_addr;
        let up = StdTcpStream::connect_timeout(&addr.into(), Duration::from_millis(500)).is_ok();
        if up && a.nchan_start != NchanStart::Always {
            let pids = listening_pids(addr);
            let workers: Vec<i32> = pids
                .iter()
                .copied()
                .filter(|&p| cmdline(p).contains("worker process"))
                .collect();
            if workers.len() != 1 {
                return Err(format!(
                    "{addr} is up but I need exactly one nginx worker to measure; found processes {pids:?} \
                     (workers {workers:?}); run nchan with worker_processes 1 or use --nchan-start always on another --nchan-addr"
                ));
            }
            return Ok(Server {
                kind: Kind::Nchan,
                addr: addr.into(),
                pid: workers[0],
                child: None,
                extra_pids: vec![],
                dir: None,
                log: None,
                note: format!("using the nchan already on {addr} (worker pid {}; not started or stopped by me)", workers[0]),
                stopped: false,
            });
        }
        if up {
            return Err(format!("--nchan-start always but {addr} is already taken"));
        }
        if a.nchan_start == NchanStart::Never {
            return Err(format!("nothing listens on {addr} and --nchan-start never"));
        }
        let tpl = Self::nchan_conf_template(a)?;
        let text = fs::read_to_string(&tpl).map_err(|e| format!("read {}: {e}", tpl.display()))?;
        let conf = text
            .replace("@WORKERS@", "1")
            .replace("@NOFILE@", "19000")
            .replace("127.0.0.1:8801", &addr.to_string());
        let dir = std::env::temp_dir().join(format!("redix-load-nchan-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("tmp")).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        std::os::unix::fs::symlink("/usr/lib/nginx/modules", dir.join("modules"))
            .map_err(|e| format!("symlink modules: {e}"))?;
        fs::write(dir.join("nginx.conf"), conf).map_err(|e| format!("write nginx.conf: {e}"))?;
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&dir)
            .status();
        let log = dir.join("error.log");
        let errf = fs::File::create(dir.join("nginx.stderr")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&a.nginx_bin);
        cmd.arg("-p")
            .arg(&dir)
            .args(["-e", "error.log", "-c", "nginx.conf", "-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(errf));
        let hint = " (apt-get install -y nginx-light libnginx-mod-nchan)";
        let child = spawn_tied(&mut cmd, &a.nginx_bin, hint)?;
        let master = child.id() as i32;
        let mut srv = Server {
            kind: Kind::Nchan,
            addr: addr.into(),
            pid: master,
            child: Some(child),
            extra_pids: vec![],
            dir: Some(dir.clone()),
            log: Some(log.clone()),
            note: String::new(),
            stopped: false,
        };
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            srv.check_alive().map_err(|e| {
                format!(
                    "{e}\nnginx stderr: {}",
                    tail_file(&dir.join("nginx.stderr"), 10)
                )
            })?;
            let workers = nginx_worker_of(master);
            if workers.len() == 1
                && StdTcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok()
            {
                srv.pid = workers[0];
                srv.extra_pids = workers.clone();
                srv.note = format!(
                    "started nginx+nchan master {master}, worker {} in {}",
                    workers[0],
                    dir.display()
                );
                return Ok(srv);
            }
            if Instant::now() > until || interrupted() {
                return Err(format!(
                    "nginx did not come up on {addr} within 15 s; error.log:\n{}",
                    tail_file(&log, 10)
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Our own redis-server for Redis mode: a free loopback port (bind :0, read it, close;
    /// another port if the server does not come up on it), no persistence, ready when it
    /// answers PING.
    fn start_redis(a: &Args) -> Res<Server> {
        let dir = std::env::temp_dir().join(format!("redix-load-redis-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let log = dir.join("redis-server.log");
        let mut why = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("pick a free port: {e}"))?
                .port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let out =
                fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
            let err = out.try_clone().map_err(|e| e.to_string())?;
            let mut cmd = Command::new(&a.redis_server_bin);
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err));
            let hint = " (apt-get install -y redis-server)";
            let child = spawn_tied(&mut cmd, &a.redis_server_bin, hint)?;
            let pid = child.id() as i32;
            let mut srv = Server {
                kind: Kind::Redis,
                addr,
                pid,
                child: Some(child),
                extra_pids: vec![],
                dir: None,
                log: Some(log.clone()),
                note: format!(
                    "started {} (pid {pid}) on {addr}",
                    a.redis_server_bin.display()
                ),
                stopped: false,
            };
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                if redis_ping(addr) {
                    srv.dir = Some(dir);
                    return Ok(srv);
                }
                if let Err(e) = srv.check_alive() {
                    why = e;
                    break;
                }
                if Instant::now() > until || interrupted() {
                    why = format!("no PONG from {addr} within 10 s");
                    srv.stop();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = fs::remove_dir_all(&dir);
        Err(format!(
            "redis-server did not come up (5 ports tried): {why}"
        ))
    }

    fn check_alive(&mut self) -> Res<()> {
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

    fn sse_request(&self, channel: &str) -> Vec<u8> {
        let path = match self.kind {
            Kind::Nchan => format!("/sub/{channel}"),
            Kind::Redix | Kind::Redis => format!("/api/stream?channels={channel}"),
        };
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
            self.addr
        )
        .into_bytes()
    }

    /// The WebSocket upgrade request up to (not including) the `Sec-WebSocket-Key` line; the
    /// key is per connection. redix: `/ws`, then a subscribe message; nchan: `/sub/CH`.
    fn ws_request_head(&self, channel: &str) -> String {
        let path = match self.kind {
            Kind::Nchan => format!("/sub/{channel}"),
            Kind::Redix | Kind::Redis => "/ws".to_string(),
        };
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
            self.addr
        )
    }

    /// Stops what we started. Returns how it ended.
    fn stop(&mut self) -> String {
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

/// What the scenarios run against: one server (embedded redix, nchan), or in Redis mode a
/// redis-server and `--redis-nodes` redix nodes using it. Subscribers are split over `nodes`,
/// the publisher posts to `nodes[0]`.
struct Deployment {
    kind: Kind,
    mode: Mode,
    nodes: Vec<Server>,
    redis: Option<Server>,
}

impl Deployment {
    fn start(kind: Kind, mode: Mode, a: &Args, tr: Transport) -> Res<Deployment> {
        let mut d = Deployment {
            kind,
            mode,
            nodes: vec![],
            redis: None,
        };
        match (kind, mode) {
            (Kind::Redix, Mode::Embedded) => d.nodes.push(Server::start_redix(a, tr, None)?),
            (Kind::Redix, Mode::Redis) => {
                let redis = Server::start_redis(a)?;
                let url = format!("redis://{}", redis.addr);
                d.redis = Some(redis);
                for i in 0..a.redis_nodes.max(1) {
                    d.nodes.push(Server::start_redix(a, tr, Some((i, &url)))?);
                }
                d.wait_redis_ready(Instant::now() + Duration::from_secs(30))?;
            }
            (Kind::Nchan, _) => d.nodes.push(Server::start_nchan(a)?),
            (Kind::Redis, _) => return Err("redis-server is not a load target".into()),
        }
        Ok(d)
    }

    /// Redis mode: every node's `/readyz` says 200 (a canary went through Redis pub/sub).
    fn wait_redis_ready(&mut self, until: Instant) -> Res<()> {
        for i in 0..self.nodes.len() {
            loop {
                let last = match http_status(self.nodes[i].addr, "/readyz") {
                    Ok(200) => break,
                    Ok(st) => format!("HTTP {st}"),
                    Err(e) => e,
                };
                self.check_alive()?;
                if Instant::now() > until || interrupted() {
                    return Err(format!(
                        "node {} ({}) /readyz not 200 within 30 s (last: {last}); stderr tail:\n{}",
                        node_name(i),
                        self.nodes[i].addr,
                        self.nodes[i]
                            .log
                            .as_deref()
                            .map(|p| tail_file(p, 20))
                            .unwrap_or_default()
                    ));
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The node the publisher posts to (the only node in embedded mode).
    fn primary(&self) -> &Server {
        &self.nodes[0]
    }

    fn check_alive(&mut self) -> Res<()> {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.check_alive().map_err(|e| match self.mode {
                Mode::Embedded => e,
                Mode::Redis => format!("node {}: {e}", node_name(i)),
            })?;
        }
        if let Some(r) = &mut self.redis {
            r.check_alive()?;
        }
        Ok(())
    }

    /// Every process measured: (name, pid); the redix nodes first, then redis-server.
    fn procs(&self) -> Vec<(String, i32)> {
        let mut v: Vec<(String, i32)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("node {}", node_name(i)), n.pid))
            .collect();
        v.extend(
            self.redis
                .iter()
                .map(|r| (r.kind.name().to_string(), r.pid)),
        );
        v
    }

    fn note(&self) -> String {
        match self.mode {
            Mode::Embedded => self.nodes[0].note.clone(),
            Mode::Redis => {
                let mut s = self
                    .redis
                    .as_ref()
                    .map(|r| r.note.clone())
                    .unwrap_or_default();
                for (i, n) in self.nodes.iter().enumerate() {
                    let _ = write!(s, "; node {} on {}: {}", node_name(i), n.addr, n.note);
                }
                s
            }
        }
    }

    /// Stops the nodes, then redis-server; how each ended.
    fn stop(&mut self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let m = n.stop();
            parts.push(match self.mode {
                Mode::Embedded => m,
                Mode::Redis => format!("node {}: {m}", node_name(i)),
            });
        }
        if let Some(r) = &mut self.redis {
            parts.push(format!("redis-server: {}", r.stop()));
        }
        parts.join("; ")
    }
}

/// "A", "B", … for node 0, 1, …
fn node_name(i: usize) -> String {
    if i < 26 {
        ((b'A' + i as u8) as char).to_string()
    } else {
        i.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Client connections: one mio loop per generator thread
// ---------------------------------------------------------------------------------------------

/// Hands out loopback source addresses 127.0.0.2, 127.0.0.3, …, never reusing one within a run
/// (so TIME_WAIT from an earlier scenario never gets in the way).
struct SrcAlloc {
    next: u32,
}

impl SrcAlloc {
    fn take(&mut self) -> Ipv4Addr {
        loop {
            let v = 0x7f00_0000u32 + self.next;
            self.next += 1;
            let low = v & 0xff;
            if low != 0 && low != 255 && v != 0x7f00_0001 {
                return Ipv4Addr::from(v);
            }
        }
    }
}

struct Shared {
    stop: AtomicBool,
    base: Instant,
    ready: AtomicUsize,
    failed: AtomicUsize,
    dropped: AtomicUsize,
    /// of those, streams the server announced as slow consumers before closing them
    slow_closed: AtomicUsize,
    retries: AtomicUsize,
    events: AtomicU64,
    stale: AtomicU64,
    bytes: AtomicU64,
    /// ns since `base` when the last connection became ready
    last_ready_ns: AtomicU64,
    /// unix ns of the last counted delivery
    last_recv_ns: AtomicU64,
    /// events whose "t" is older than this are counted as stale, not as deliveries
    pub_start_ns: AtomicU64,
    first_err: Mutex<Option<String>>,
    errors: AtomicUsize,
    /// connections ready, per node
    node_ready: Vec<AtomicUsize>,
}

impl Shared {
    fn err(&self, e: String) {
        self.errors.fetch_add(1, Relaxed);
        let mut g = self.first_err.lock().unwrap();
        if g.is_none() {
            *g = Some(e);
        }
    }
}

/// Where one node's connections go and what they send.
struct NodeTarget {
    addr: SocketAddr,
    /// the SSE request (unused for WebSocket)
    req: Vec<u8>,
    /// Some: WebSocket connections
    ws: Option<Arc<WsCfg>>,
}

#[derive(Clone)]
struct WorkerCfg {
    nodes: Arc<Vec<NodeTarget>>,
    /// (source address, node index) of each of this thread's connections
    conns: Vec<(Ipv4Addr, usize)>,
    need_retry: bool,
    concurrency: usize,
    attempts: u32,
    connect_timeout: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum St {
    Idle,
    Connecting,
    Sending(usize),
    Headers,
    Body,
}

#[derive(Clone, Copy)]
enum ChSt {
    Size,
    Ext,
    Data(u64),
    DataCr,
    DataLf,
    Done,
}

/// Transfer-Encoding: chunked decoder (neither server is expected to use it; handled anyway).
struct Chunked {
    st: ChSt,
    size: u64,
}

impl Chunked {
    fn decode<'a>(&mut self, data: &'a [u8], mut out: impl FnMut(&'a [u8])) -> Result<(), String> {
        let mut i = 0;
        while i < data.len() {
            match self.st {
                ChSt::Size => {
                    let b = data[i];
                    i += 1;
                    match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            self.size = self.size * 16 + (b as char).to_digit(16).unwrap() as u64;
                        }
                        b';' | b' ' | b'\r' => self.st = ChSt::Ext,
                        b'\n' => self.end_size(),
                        _ => return Err("bad chunk size".into()),
                    }
                }
                ChSt::Ext => {
                    if data[i] == b'\n' {
                        self.end_size();
                    }
                    i += 1;
                }
                ChSt::Data(rem) => {
                    let take = (rem as usize).min(data.len() - i);
                    out(&data[i..i + take]);
                    i += take;
                    let rem = rem - take as u64;
                    self.st = if rem == 0 {
                        ChSt::DataCr
                    } else {
                        ChSt::Data(rem)
                    };
                }
                ChSt::DataCr => {
                    self.st = if data[i] == b'\n' {
                        ChSt::Size
                    } else {
                        ChSt::DataLf
                    };
                    i += 1;
                }
                ChSt::DataLf => {
                    if data[i] != b'\n' {
                        return Err("bad chunk trailer".into());
                    }
                    self.st = ChSt::Size;
                    i += 1;
                }
                ChSt::Done => return Ok(()),
            }
        }
        Ok(())
    }
    fn end_size(&mut self) {
        self.st = if self.size == 0 {
            ChSt::Done
        } else {
            ChSt::Data(self.size)
        };
        self.size = 0;
    }
}

struct Conn {
    sock: Option<TcpStream>,
    st: St,
    src: Ipv4Addr,
    /// index of the node (server) it connects to
    node: usize,
    attempts: u32,
    started: Instant,
    hdr: Vec<u8>,
    chunked: Option<Chunked>,
    line: Vec<u8>,
    pending_t: Option<u64>,
    /// SSE: redix's first `retry:` line arrived; WebSocket: redix's `subscribed` ack arrived
    got_retry: bool,
    ready: bool,
    /// the server announced a slow-consumer close (SSE `event: slow`; WebSocket: close 4008)
    slow: bool,
    /// WebSocket state (None for SSE)
    ws: Option<Box<WsConn>>,
}

// ---------------------------------------------------------------------------------------------
// WebSocket client side (RFC 6455): handshake, masked client frames, incremental frame parser
// ---------------------------------------------------------------------------------------------

/// Largest server frame (and reassembled message) accepted.
const WS_MAX_FRAME: u64 = 16 << 20;

struct WsCfg {
    /// upgrade request without the `Sec-WebSocket-Key` line and the final CRLF
    head: String,
    /// unmasked subscribe message sent after the `101` (redix); None: the URL subscribes (nchan)
    subscribe: Option<Vec<u8>>,
}

struct WsConn {
    cfg: Arc<WsCfg>,
    /// this attempt's upgrade request (fresh key per attempt)
    req: Vec<u8>,
    /// expected `Sec-WebSocket-Accept`
    accept: String,
    /// frames to send (subscribe, pongs), not yet written
    out: Vec<u8>,
    /// the start of a frame whose rest has not arrived yet
    fbuf: Vec<u8>,
    /// a fragmented message being reassembled
    msg: Vec<u8>,
    frag: bool,
    rng: u64,
    /// the server closed with 4008 (slow consumer)
    slow: bool,
}

/// (header length, payload length) of the frame at the start of `b`; None until the header
/// (2, 4 or 10 bytes) is complete.
#[inline]
fn ws_header(b: &[u8]) -> Option<(usize, u64)> {
    if b.len() < 2 {
        return None;
    }
    match b[1] & 0x7f {
        126 => (b.len() >= 4).then(|| (4, u16::from_be_bytes([b[2], b[3]]) as u64)),
        127 => (b.len() >= 10).then(|| (10, u64::from_be_bytes(b[2..10].try_into().unwrap()))),
        n => Some((2, n as u64)),
    }
}

impl WsConn {
    fn new(cfg: Arc<WsCfg>, seed: u64) -> WsConn {
        WsConn {
            cfg,
            req: Vec::new(),
            accept: String::new(),
            out: Vec::new(),
            fbuf: Vec::new(),
            msg: Vec::new(),
            frag: false,
            rng: seed | 1,
            slow: false,
        }
    }

    /// A new attempt: a fresh key and request, empty buffers.
    fn reset(&mut self) {
        let key = tungstenite::handshake::client::generate_key();
        self.accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        self.req.clear();
        self.req.extend_from_slice(self.cfg.head.as_bytes());
        self.req
            .extend_from_slice(format!("Sec-WebSocket-Key: {key}\r\n\r\n").as_bytes());
        self.out.clear();
        self.fbuf.clear();
        self.msg.clear();
        self.frag = false;
        self.slow = false;
    }

    /// xorshift64*, for masking keys (RFC 6455 wants them unpredictable, not cryptographic here)
    fn rand32(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }

    /// Appends one masked client frame (FIN set) to `out`.
    fn push_frame(&mut self, opcode: u8, payload: &[u8]) {
        let n = payload.len();
        self.out.push(0x80 | opcode);
        if n < 126 {
            self.out.push(0x80 | n as u8);
        } else if n <= 0xffff {
            self.out.push(0x80 | 126);
            self.out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.out.push(0x80 | 127);
            self.out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        let mask = self.rand32().to_ne_bytes();
        self.out.extend_from_slice(&mask);
        self.out
            .extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    }

    fn flush(&mut self, sock: &mut TcpStream) -> Result<(), String> {
        let mut off = 0;
        while off < self.out.len() {
            match sock.write(&self.out[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("WebSocket write: {e}")),
            }
        }
        self.out.drain(..off);
        Ok(())
    }

    /// Checks the `101` and queues the subscribe message.
    fn handshake(&mut self, head: &str) -> Result<(), String> {
        let status = head.lines().next().unwrap_or("");
        if !status.starts_with("HTTP/1.1 101") {
            return Err(format!("unexpected response to the upgrade: {status}"));
        }
        match header_value(head, "sec-websocket-accept") {
            Some(v) if v == self.accept => {}
            v => {
                return Err(format!(
                    "bad Sec-WebSocket-Accept {v:?} (expected {})",
                    self.accept
                ))
            }
        }
        if header_value(head, "sec-websocket-extensions").is_some() {
            return Err("server negotiated an extension that was not offered".into());
        }
        if let Some(sub) = self.cfg.subscribe.clone() {
            self.push_frame(0x1, &sub);
        }
        Ok(())
    }

    /// Feeds bytes read after the `101`. Returns true if a `subscribed` ack was among them.
    fn feed(&mut self, mut data: &[u8], loc: &mut Local) -> Result<bool, String> {
        let mut acked = false;
        // Complete a frame begun in an earlier read, copying only that frame's bytes.
        while !self.fbuf.is_empty() && !data.is_empty() {
            let want = match ws_header(&self.fbuf) {
                Some((hl, len)) if len <= WS_MAX_FRAME => hl + len as usize,
                Some((_, len)) => return Err(format!("server frame of {len} bytes")),
                None if self.fbuf.len() < 2 => 2,
                None if self.fbuf[1] & 0x7f == 126 => 4,
                None => 10,
            };
            let take = (want - self.fbuf.len()).min(data.len());
            self.fbuf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if matches!(ws_header(&self.fbuf), Some((hl, len)) if (hl as u64 + len) == self.fbuf.len() as u64)
            {
                let buf = std::mem::take(&mut self.fbuf);
                let r = self.frames(&buf, loc, &mut acked);
                self.fbuf = buf;
                self.fbuf.clear();
                r?;
            }
        }
        if !data.is_empty() {
            let used = self.frames(data, loc, &mut acked)?;
            self.fbuf.extend_from_slice(&data[used..]);
        }
        Ok(acked)
    }

    /// Handles every complete frame at the start of `buf`; returns the bytes they took.
    fn frames(&mut self, buf: &[u8], loc: &mut Local, acked: &mut bool) -> Result<usize, String> {
        let mut i = 0;
        while let Some((hl, len)) = ws_header(&buf[i..]) {
            let (b0, b1) = (buf[i], buf[i + 1]);
            if b1 & 0x80 != 0 {
                return Err("server sent a masked frame".into());
            }
            if b0 & 0x70 != 0 {
                return Err(format!("server frame with RSV bits {:#x}", b0 & 0x70));
            }
            if len > WS_MAX_FRAME {
                return Err(format!("server frame of {len} bytes"));
            }
            let end = i + hl + len as usize;
            if end > buf.len() {
                break;
            }
            self.frame(b0 & 0x80 != 0, b0 & 0x0f, &buf[i + hl..end], loc, acked)?;
            i = end;
        }
        Ok(i)
    }

    fn frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
        loc: &mut Local,
        acked: &mut bool,
    ) -> Result<(), String> {
        match opcode {
            0x1 | 0x2 => {
                if self.frag {
                    return Err("new message inside a fragmented one".into());
                }
                if fin {
                    Self::message(payload, loc, acked)?;
                } else {
                    self.frag = true;
                    self.msg.clear();
                    self.msg.extend_from_slice(payload);
                }
            }
            0x0 => {
                if !self.frag {
                    return Err("continuation frame without a message".into());
                }
                self.msg.extend_from_slice(payload);
                if self.msg.len() as u64 > WS_MAX_FRAME {
                    return Err("fragmented message over 16 MiB".into());
                }
                if fin {
                    self.frag = false;
                    let m = std::mem::take(&mut self.msg);
                    let r = Self::message(&m, loc, acked);
                    self.msg = m;
                    r?;
                }
            }
            0x8 => {
                let code = if payload.len() >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]])
                } else {
                    1005
                };
                self.slow = code == 4008;
                return Err(format!(
                    "server closed the WebSocket: {code} {}",
                    String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]))
                ));
            }
            0x9 => self.push_frame(0xA, payload),
            0xA => {}
            op => return Err(format!("server frame with opcode {op:#x}")),
        }
        Ok(())
    }

    #[inline]
    fn message(m: &[u8], loc: &mut Local, acked: &mut bool) -> Result<(), String> {
        if let Some(t) = parse_t(m) {
            loc.delivery(t);
        } else if find(m, b"\"subscribed\"").is_some() {
            *acked = true;
        } else if find(m, b"\"error\"").is_some() {
            return Err(format!("server answered {}", String::from_utf8_lossy(m)));
        }
        Ok(())
    }
}

/// Per-thread counters, flushed to `Shared` once per loop iteration.
struct Local {
    hist: Histogram,
    /// connect() → ready, per successful attempt, µs
    setup: Histogram,
    /// latency per node when there are several (empty for one server)
    node_hist: Vec<Histogram>,
    /// the node of the connection being read
    node: usize,
    events: u64,
    stale: u64,
    bytes: u64,
    last_recv: u64,
    pub_start: u64,
    now_ns: u64,
}

impl Local {
    fn new(nodes: usize, pub_start: u64, now_ns: u64) -> Local {
        Local {
            hist: Histogram::new(),
            setup: Histogram::new(),
            node_hist: if nodes > 1 {
                vec![Histogram::new(); nodes]
            } else {
                vec![]
            },
            node: 0,
            events: 0,
            stale: 0,
            bytes: 0,
            last_recv: 0,
            pub_start,
            now_ns,
        }
    }

    #[inline]
    fn delivery(&mut self, t: u64) {
        if t < self.pub_start {
            self.stale += 1;
        } else {
            self.events += 1;
            let us = self.now_ns.saturating_sub(t) / 1000;
            self.hist.record(us);
            if let Some(h) = self.node_hist.get_mut(self.node) {
                h.record(us);
            }
            self.last_recv = self.now_ns;
        }
    }

    fn into_hists(self) -> Hists {
        Hists {
            lat: self.hist,
            setup: self.setup,
            node_lat: self.node_hist,
        }
    }
}

/// What a set of connections measured: publish→receive latency (all, and per node when there
/// are several) and connect→ready.
struct Hists {
    lat: Histogram,
    setup: Histogram,
    node_lat: Vec<Histogram>,
}

impl Hists {
    fn merge(&mut self, o: &Hists) {
        self.lat.merge(&o.lat);
        self.setup.merge(&o.setup);
        if self.node_lat.len() < o.node_lat.len() {
            self.node_lat.resize(o.node_lat.len(), Histogram::new());
        }
        for (a, b) in self.node_lat.iter_mut().zip(&o.node_lat) {
            a.merge(b);
        }
    }
}

enum Outcome {
    Continue,
    /// (message, retryable)
    Fail(String, bool),
}

impl Conn {
    fn new(src: Ipv4Addr) -> Conn {
        Conn {
            sock: None,
            st: St::Idle,
            src,
            node: 0,
            attempts: 0,
            started: Instant::now(),
            hdr: Vec::new(),
            chunked: None,
            line: Vec::new(),
            pending_t: None,
            got_retry: false,
            ready: false,
            slow: false,
            ws: None,
        }
    }

    fn start(
        &mut self,
        tok: usize,
        server: SocketAddr,
        reg: &Registry,
        ws: Option<&Arc<WsCfg>>,
    ) -> io::Result<()> {
        let s = Socket::new(
            Domain::IPV4,
            Type::STREAM.nonblocking(),
            Some(Protocol::TCP),
        )?;
        s.set_tcp_nodelay(true)?;
        s.bind(&SockAddr::from(SocketAddrV4::new(self.src, 0)))?;
        match s.connect(&SockAddr::from(server)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut ms = TcpStream::from_std(s.into());
        reg.register(&mut ms, Token(tok), Interest::READABLE | Interest::WRITABLE)?;
        self.sock = Some(ms);
        self.st = St::Connecting;
        self.started = Instant::now();
        self.hdr.clear();
        self.line.clear();
        self.chunked = None;
        self.pending_t = None;
        self.got_retry = false;
        self.slow = false;
        if let Some(cfg) = ws {
            let seed = now_ns() ^ (tok as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            self.ws
                .get_or_insert_with(|| Box::new(WsConn::new(cfg.clone(), seed)))
                .reset();
        }
        Ok(())
    }

    fn close(&mut self, reg: &Registry, rst: bool) {
        if let Some(mut s) = self.sock.take() {
            let _ = reg.deregister(&mut s);
            if rst {
                let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
        }
        self.st = St::Idle;
    }

    /// `drain`: read until EOF/EAGAIN even after a short read (the event reported a hang-up or
    /// an error, which no later edge would report again).
    fn on_event(&mut self, req: &[u8], rbuf: &mut [u8], loc: &mut Local, drain: bool) -> Outcome {
        loop {
            let Some(sock) = self.sock.as_mut() else {
                return Outcome::Continue;
            };
            match self.st {
                St::Idle => return Outcome::Continue,
                St::Connecting => {
                    match sock.take_error() {
                        Ok(Some(e)) | Err(e) => {
                            return Outcome::Fail(format!("connect: {e}"), true)
                        }
                        Ok(None) => {}
                    }
                    match sock.peer_addr() {
                        Ok(_) => self.st = St::Sending(0),
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                            return Outcome::Continue
                        }
                        Err(e) => return Outcome::Fail(format!("connect: {e}"), true),
                    }
                }
                St::Sending(off) => {
                    let req: &[u8] = match &self.ws {
                        Some(w) => &w.req,
                        None => req,
                    };
                    match sock.write(&req[off..]) {
                        Ok(n) if off + n == req.len() => self.st = St::Headers,
                        Ok(n) => self.st = St::Sending(off + n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Outcome::Continue
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Outcome::Fail(format!("write request: {e}"), true),
                    }
                }
                St::Headers | St::Body => {
                    if let Some(w) = self.ws.as_mut() {
                        if !w.out.is_empty() {
                            if let Err(e) = w.flush(sock) {
                                return Outcome::Fail(e, true);
                            }
                        }
                    }
                    return match sock.read(rbuf) {
                        Ok(0) => Outcome::Fail("closed by server".into(), true),
                        Ok(n) => {
                            loc.bytes += n as u64;
                            loc.now_ns = now_ns();
                            if let Err(e) = self.feed(&rbuf[..n], loc) {
                                return Outcome::Fail(e, false);
                            }
                            if let (Some(w), Some(sock)) = (self.ws.as_mut(), self.sock.as_mut()) {
                                if !w.out.is_empty() {
                                    if let Err(e) = w.flush(sock) {
                                        return Outcome::Fail(e, true);
                                    }
                                }
                            }
                            if n < rbuf.len() && !drain {
                                // Short read: the receive queue is empty and edge-triggered epoll
                                // reports the next arrival (data or FIN) as a new event, so skip the
                                // read that would return EAGAIN. A FIN that had already arrived
                                // shows in this event as read-closed, and then `drain` is set.
                                Outcome::Continue
                            } else {
                                continue;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Outcome::Continue,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => Outcome::Fail(format!("read: {e}"), true),
                    };
                }
            }
        }
    }

    fn feed(&mut self, data: &[u8], loc: &mut Local) -> Result<(), String> {
        if self.st == St::Headers {
            self.hdr.extend_from_slice(data);
            let Some(end) = find(&self.hdr, b"\r\n\r\n") else {
                if self.hdr.len() > 16 * 1024 {
                    return Err("response headers over 16 KiB".into());
                }
                return Ok(());
            };
            let head = String::from_utf8_lossy(&self.hdr[..end]).into_owned();
            if let Some(w) = self.ws.as_mut() {
                w.handshake(&head)?;
                let rest = self.hdr.split_off(end + 4);
                self.hdr = Vec::new();
                self.st = St::Body;
                return self.feed_ws(&rest, loc);
            }
            let status = head.lines().next().unwrap_or("");
            if !(status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200")) {
                return Err(format!("unexpected response: {status}"));
            }
            if header_value(&head, "transfer-encoding")
                .map(|v| v.to_ascii_lowercase().contains("chunked"))
                .unwrap_or(false)
            {
                self.chunked = Some(Chunked {
                    st: ChSt::Size,
                    size: 0,
                });
            }
            let rest = self.hdr.split_off(end + 4);
            self.hdr = Vec::new();
            self.st = St::Body;
            return self.feed_body(&rest, loc);
        }
        if self.ws.is_some() {
            return self.feed_ws(data, loc);
        }
        self.feed_body(data, loc)
    }

    fn feed_ws(&mut self, data: &[u8], loc: &mut Local) -> Result<(), String> {
        if let Some(w) = self.ws.as_mut() {
            if w.feed(data, loc)? {
                self.got_retry = true;
            }
        }
        Ok(())
    }

    fn feed_body(&mut self, data: &[u8], loc: &mut Local) -> Result<(), String> {
        if let Some(mut ch) = self.chunked.take() {
            let mut res = Ok(());
            let r = ch.decode(data, |piece| {
                if res.is_ok() {
                    res = self.feed_sse(piece, loc);
                }
            });
            self.chunked = Some(ch);
            r?;
            return res;
        }
        self.feed_sse(data, loc)
    }

    /// Incremental SSE parser: lines end in \n (optional \r), an event ends at a blank line.
    fn feed_sse(&mut self, data: &[u8], loc: &mut Local) -> Result<(), String> {
        let mut start = 0;
        while start < data.len() {
            match find_nl(&data[start..]) {
                Some(p) => {
                    let end = start + p;
                    if self.line.is_empty() {
                        self.line_done(&data[start..end], loc);
                    } else {
                        self.line.extend_from_slice(&data[start..end]);
                        let l = std::mem::take(&mut self.line);
                        self.line_done(&l, loc);
                        self.line = l;
                        self.line.clear();
                    }
                    start = end + 1;
                }
                None => {
                    self.line.extend_from_slice(&data[start..]);
                    if self.line.len() > 1 << 20 {
                        return Err("SSE line over 1 MiB".into());
                    }
                    break;
                }
            }
        }
        Ok(())
    }

    #[inline]
    fn line_done(&mut self, line: &[u8], loc: &mut Local) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if let Some(t) = self.pending_t.take() {
                loc.delivery(t);
            }
            return;
        }
        match line[0] {
            b'd' if self.pending_t.is_none() && line.starts_with(b"data:") => {
                self.pending_t = parse_t(line)
            }
            b'r' if line.starts_with(b"retry:") => self.got_retry = true,
            b'e' if line.strip_prefix(b"event:").map(|v| v.trim_ascii()) == Some(b"slow") => {
                self.slow = true
            }
            _ => {}
        }
    }
}

fn worker(cfg: WorkerCfg, sh: Arc<Shared>) -> Hists {
    let mut loc = Local::new(cfg.nodes.len(), u64::MAX, 0);
    let n = cfg.conns.len();
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            sh.err(format!("epoll: {e}"));
            sh.failed.fetch_add(n, Relaxed);
            return loc.into_hists();
        }
    };
    let mut events = Events::with_capacity(1024);
    let mut conns: Vec<Conn> = cfg
        .conns
        .iter()
        .map(|&(src, node)| Conn {
            node,
            ..Conn::new(src)
        })
        .collect();
    let ws = cfg.nodes.first().is_some_and(|t| t.ws.is_some());
    let mut queue: VecDeque<usize> = (0..n).collect();
    let mut in_flight = 0usize;
    let mut rbuf = vec![0u8; 64 * 1024];
    let mut last_scan = Instant::now();
    let (mut ready, mut failed, mut dropped, mut retries) = (0usize, 0usize, 0usize, 0usize);
    let mut slow_closed = 0usize;
    let mut last_ready = 0u64;

    // A connection attempt went wrong: retry it (bounded) or count it as failed.
    macro_rules! attempt_failed {
        ($i:expr, $msg:expr, $retryable:expr) => {{
            let i = $i;
            let c = &mut conns[i];
            c.close(poll.registry(), true);
            c.attempts += 1;
            if $retryable && c.attempts < cfg.attempts {
                retries += 1;
                queue.push_back(i);
            } else {
                failed += 1;
                sh.err(format!(
                    "connection from {} failed after {} attempt(s): {}",
                    c.src, c.attempts, $msg
                ));
            }
        }};
    }

    while !sh.stop.load(Relaxed) && !interrupted() {
        while in_flight < cfg.concurrency {
            let Some(i) = queue.pop_front() else { break };
            let t = &cfg.nodes[conns[i].node];
            match conns[i].start(i, t.addr, poll.registry(), t.ws.as_ref()) {
                Ok(()) => in_flight += 1,
                Err(e) => attempt_failed!(i, format!("socket/bind/connect: {e}"), true),
            }
        }
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
            if e.kind() != io::ErrorKind::Interrupted {
                sh.err(format!("poll: {e}"));
                break;
            }
        }
        loc.pub_start = sh.pub_start_ns.load(Relaxed);
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            if c.sock.is_none() {
                continue;
            }
            let drain = ev.is_read_closed() || ev.is_error();
            loc.node = c.node;
            match c.on_event(&cfg.nodes[c.node].req, &mut rbuf, &mut loc, drain) {
                Outcome::Continue => {
                    if !c.ready && c.st == St::Body && (!cfg.need_retry || c.got_retry) {
                        c.ready = true;
                        sh.node_ready[c.node].fetch_add(1, Relaxed);
                        loc.setup.record(c.started.elapsed().as_micros() as u64);
                        in_flight -= 1;
                        ready += 1;
                        last_ready = sh.base.elapsed().as_nanos() as u64;
                    }
                }
                Outcome::Fail(msg, retryable) => {
                    if c.ready {
                        c.close(poll.registry(), true);
                        dropped += 1;
                        if c.slow || c.ws.as_ref().is_some_and(|w| w.slow) {
                            slow_closed += 1;
                        }
                        sh.err(format!(
                            "stream from {} ended after it was ready: {msg}",
                            c.src
                        ));
                    } else {
                        in_flight -= 1;
                        attempt_failed!(i, msg, retryable);
                    }
                }
            }
        }
        if last_scan.elapsed() > Duration::from_millis(250) {
            last_scan = Instant::now();
            for i in 0..n {
                let c = &conns[i];
                if c.sock.is_some() && !c.ready && c.started.elapsed() > cfg.connect_timeout {
                    let what = match (c.st, ws) {
                        (St::Connecting, _) => "TCP connect",
                        (St::Sending(_), _) => "sending the request",
                        (St::Headers, false) => "response headers",
                        (_, false) => "the first `retry:` line",
                        (St::Headers, true) => "the 101 response",
                        (_, true) => "the `subscribed` ack",
                    };
                    in_flight -= 1;
                    attempt_failed!(
                        i,
                        format!(
                            "timed out after {:?} waiting for {what}",
                            cfg.connect_timeout
                        ),
                        true
                    );
                }
            }
        }
        // flush counters
        if ready > 0 {
            sh.ready.fetch_add(ready, Relaxed);
            sh.last_ready_ns.fetch_max(last_ready, Relaxed);
            ready = 0;
        }
        if failed > 0 {
            sh.failed.fetch_add(failed, Relaxed);
            failed = 0;
        }
        if dropped > 0 {
            sh.dropped.fetch_add(dropped, Relaxed);
            sh.slow_closed.fetch_add(slow_closed, Relaxed);
            dropped = 0;
            slow_closed = 0;
        }
        if retries > 0 {
            sh.retries.fetch_add(retries, Relaxed);
            retries = 0;
        }
        if loc.events > 0 {
            sh.events.fetch_add(loc.events, Relaxed);
            sh.last_recv_ns.fetch_max(loc.last_recv, Relaxed);
            loc.events = 0;
        }
        if loc.stale > 0 {
            sh.stale.fetch_add(loc.stale, Relaxed);
            loc.stale = 0;
        }
        if loc.bytes > 0 {
            sh.bytes.fetch_add(loc.bytes, Relaxed);
            loc.bytes = 0;
        }
    }
    // Reset rather than FIN: no TIME_WAIT left behind on either side.
    for c in conns.iter_mut() {
        c.close(poll.registry(), true);
    }
    loc.into_hists()
}

/// A set of SSE or WebSocket connections spread over the generator threads, and split evenly
/// over `nodes` (connection i to node i mod N; one node but in Redis mode).
struct ConnSet {
    sh: Arc<Shared>,
    handles: Vec<JoinHandle<Hists>>,
    n: usize,
    /// connections planned per node
    per_node: Vec<usize>,
}

impl ConnSet {
    fn start(
        nodes: &[Server],
        a: &Args,
        tr: Transport,
        n: usize,
        srcs: &mut SrcAlloc,
    ) -> Res<ConnSet> {
        let threads = a.threads.max(1);
        let per_source = a.per_source.max(1);
        let sh = Arc::new(Shared {
            stop: AtomicBool::new(false),
            base: Instant::now(),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            slow_closed: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
            events: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            last_ready_ns: AtomicU64::new(0),
            last_recv_ns: AtomicU64::new(0),
            pub_start_ns: AtomicU64::new(u64::MAX),
            first_err: Mutex::new(None),
            errors: AtomicUsize::new(0),
            node_ready: nodes.iter().map(|_| AtomicUsize::new(0)).collect(),
        });
        let kind = nodes.first().ok_or("no server to connect to")?.kind;
        let mut per_thread: Vec<Vec<(Ipv4Addr, usize)>> = vec![Vec::new(); threads];
        let mut per_node = vec![0; nodes.len()];
        let mut src = srcs.take();
        for i in 0..n {
            if i > 0 && i % per_source == 0 {
                src = srcs.take();
            }
            let node = i % nodes.len();
            per_node[node] += 1;
            per_thread[i % threads].push((src, node));
        }
        let targets: Arc<Vec<NodeTarget>> = Arc::new(
            nodes
                .iter()
                .map(|srv| NodeTarget {
                    addr: srv.addr,
                    req: srv.sse_request(&a.channel),
                    ws: (tr == Transport::Ws).then(|| {
                        Arc::new(WsCfg {
                            head: srv.ws_request_head(&a.channel),
                            subscribe: (kind == Kind::Redix).then(|| {
                                json!({"type": "subscribe", "channel": a.channel})
                                    .to_string()
                                    .into_bytes()
                            }),
                        })
                    }),
                })
                .collect(),
        );
        let mut handles = Vec::new();
        for (t, list) in per_thread.into_iter().enumerate() {
            let cfg = WorkerCfg {
                nodes: targets.clone(),
                conns: list,
                need_retry: kind == Kind::Redix,
                concurrency: (a.connect_concurrency / threads).max(1),
                attempts: a.connect_attempts.max(1),
                connect_timeout: Duration::from_secs_f64(a.connect_timeout),
            };
            let sh2 = sh.clone();
            let h = thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || worker(cfg, sh2))
                .map_err(|e| format!("spawn thread: {e}"))?;
            handles.push(h);
        }
        Ok(ConnSet {
            sh,
            handles,
            n,
            per_node,
        })
    }

    fn settled(&self) -> usize {
        self.sh.ready.load(Relaxed) + self.sh.failed.load(Relaxed)
    }

    /// Waits until every connection is ready or has failed for good.
    fn wait_ready(&self, dep: &mut Deployment, deadline: Instant) -> Res<()> {
        loop {
            if self.settled() >= self.n {
                return Ok(());
            }
            dep.check_alive()?;
            if interrupted() {
                return Err("interrupted".into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "scenario deadline: only {} of {} connections ready",
                    self.sh.ready.load(Relaxed),
                    self.n
                ));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the threads (closing every connection); returns their histograms, merged.
    fn finish(mut self) -> Hists {
        self.sh.stop.store(true, Relaxed);
        let mut h = Local::new(0, 0, 0).into_hists();
        for j in self.handles.drain(..) {
            if let Ok(x) = j.join() {
                h.merge(&x);
            }
        }
        h
    }

    fn first_err(&self) -> Option<String> {
        self.sh.first_err.lock().unwrap().clone()
    }
}

impl Drop for ConnSet {
    fn drop(&mut self) {
        self.sh.stop.store(true, Relaxed);
        for j in self.handles.drain(..) {
            let _ = j.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Publisher: keep-alive HTTP/1.1 client on its own thread, deadline-based (open-loop) pacing
// ---------------------------------------------------------------------------------------------
//
// Event i is due at start + i/rate. It goes out on an idle keep-alive connection; when every
// open connection still waits for its response, another is opened (up to --pub-conns), so a
// server that answers publishes slowly still gets the requested rate offered. When all
// --pub-conns are busy the event waits (reported as pacing lag); whatever is not sent within
// the run's duration is reported as unsent.

struct PubCfg {
    kind: Kind,
    addr: SocketAddr,
    channel: String,
    rate: f64,
    duration: Duration,
    payload_bytes: usize,
    max_conns: usize,
    deadline: Instant,
    stop: Arc<AtomicBool>,
}

struct PubOut {
    planned: u64,
    sent: u64,
    ok: u64,
    errors: u64,
    first_err: Option<String>,
    elapsed: Duration,
    max_lag: Duration,
    rtt: Histogram,
    connects: u64,
    max_in_flight: usize,
}

fn publish_request(c: &PubCfg, t: u64) -> Vec<u8> {
    // {"t":<19 digits>,"pad":"…"} sized to payload_bytes
    let fixed = format!("{{\"t\":{t},\"pad\":\"\"}}").len();
    let pad = "x".repeat(c.payload_bytes.saturating_sub(fixed));
    let inner = format!("{{\"t\":{t},\"pad\":\"{pad}\"}}");
    let (path, body) = match c.kind {
        Kind::Redix | Kind::Redis => (
            "/api/publish".to_string(),
            format!("{{\"channel\":{},\"data\":{inner}}}", json!(c.channel)),
        ),
        Kind::Nchan => (format!("/pub?id={}", c.channel), inner),
    };
    format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        c.addr,
        body.len()
    )
    .into_bytes()
}

/// One complete response at the start of `buf`: Some(Ok((bytes consumed, status, must close))).
/// Bodies framed by Content-Length or chunked; anything else is read until EOF (`eof`).
fn parse_response(buf: &[u8], eof: bool) -> Option<Result<(usize, u16, bool), String>> {
    let end = match find(buf, b"\r\n\r\n") {
        Some(e) => e,
        None if buf.len() > 64 * 1024 => return Some(Err("response headers over 64 KiB".into())),
        None => return None,
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let Some(status) = head
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u16>().ok())
    else {
        return Some(Err(format!(
            "bad status line: {}",
            head.lines().next().unwrap_or("")
        )));
    };
    let close = header_value(&head, "connection")
        .map(|v| v.eq_ignore_ascii_case("close"))
        .unwrap_or(false)
        || head.starts_with("HTTP/1.0");
    let body = end + 4;
    if let Some(cl) = header_value(&head, "content-length") {
        let Ok(cl) = cl.parse::<usize>() else {
            return Some(Err("bad content-length".into()));
        };
        return (buf.len() >= body + cl).then_some(Ok((body + cl, status, close)));
    }
    if header_value(&head, "transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false)
    {
        return find(&buf[body..], b"0\r\n\r\n").map(|e| Ok((body + e + 5, status, close)));
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Some(Ok((body, status, close)));
    }
    eof.then_some(Ok((buf.len(), status, true)))
}

struct PubConn {
    sock: TcpStream,
    connected: bool,
    /// request bytes not yet written
    out: Vec<u8>,
    inbuf: Vec<u8>,
    /// a request is outstanding, sent at this instant
    busy: Option<Instant>,
}

fn publisher(c: PubCfg) -> PubOut {
    let planned = (c.rate * c.duration.as_secs_f64()).round() as u64;
    let mut out = PubOut {
        planned,
        sent: 0,
        ok: 0,
        errors: 0,
        first_err: None,
        elapsed: Duration::ZERO,
        max_lag: Duration::ZERO,
        rtt: Histogram::new(),
        connects: 0,
        max_in_flight: 0,
    };
    fn note(out: &mut PubOut, e: String) {
        out.errors += 1;
        if out.first_err.is_none() {
            out.first_err = Some(e);
        }
    }
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            note(&mut out, format!("epoll: {e}"));
            return out;
        }
    };
    let mut events = Events::with_capacity(64);
    let mut conns: Vec<Option<PubConn>> = (0..c.max_conns.max(1)).map(|_| None).collect();
    let mut rbuf = vec![0u8; 16 * 1024];
    let start = Instant::now();
    let end = start + c.duration;
    let mut next: u64 = 0;
    // Outstanding responses are waited for this long after the publishing window.
    let response_grace = Duration::from_secs(10);

    // Pushes pending bytes; reads and completes responses. Returns false if the conn must go.
    fn service(pc: &mut PubConn, rbuf: &mut [u8], out: &mut PubOut) -> Result<bool, String> {
        if !pc.connected {
            if let Ok(Some(e)) | Err(e) = pc.sock.take_error() {
                return Err(format!("publish connect: {e}"));
            }
            match pc.sock.peer_addr() {
                Ok(_) => pc.connected = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(true),
                Err(e) => return Err(format!("publish connect: {e}")),
            }
        }
        while !pc.out.is_empty() {
            match pc.sock.write(&pc.out) {
                Ok(n) => {
                    pc.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("publish write: {e}")),
            }
        }
        let mut eof = false;
        loop {
            match pc.sock.read(rbuf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => pc.inbuf.extend_from_slice(&rbuf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("publish read: {e}")),
            }
        }
        let mut keep = !eof;
        while !pc.inbuf.is_empty() {
            match parse_response(&pc.inbuf, eof) {
                None => break,
                Some(Err(e)) => return Err(e),
                Some(Ok((used, status, close))) => {
                    pc.inbuf.drain(..used);
                    if let Some(t0) = pc.busy.take() {
                        out.rtt.record(t0.elapsed().as_micros() as u64);
                        if (200..300).contains(&status) {
                            out.ok += 1;
                        } else {
                            note(out, format!("publish answered HTTP {status}"));
                        }
                    }
                    if close {
                        keep = false;
                    }
                }
            }
        }
        if eof && pc.busy.is_some() {
            return Err("server closed the publish connection before answering".into());
        }
        Ok(keep)
    }

    loop {
        let now = Instant::now();
        let stopping = c.stop.load(Relaxed) || interrupted() || now > c.deadline;
        // Send every event that is due, while a connection is free.
        while !stopping && next < planned && now < end {
            let due = start + Duration::from_nanos((next as f64 * 1e9 / c.rate) as u64);
            if due > now {
                break;
            }
            let slot = conns
                .iter()
                .position(|x| matches!(x, Some(pc) if pc.busy.is_none()))
                .or_else(|| conns.iter().position(|x| x.is_none()));
            let Some(k) = slot else { break };
            if conns[k].is_none() {
                out.connects += 1;
                if out.connects > 20 * c.max_conns as u64 + 20 {
                    note(
                        &mut out,
                        "too many publish connections failed; giving up".into(),
                    );
                    next = planned;
                    break;
                }
                match StdTcpStream::connect_timeout(&c.addr, Duration::from_secs(2)) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        let _ = s.set_nonblocking(true);
                        let mut sock = TcpStream::from_std(s);
                        if let Err(e) = poll.registry().register(
                            &mut sock,
                            Token(k),
                            Interest::READABLE | Interest::WRITABLE,
                        ) {
                            note(&mut out, format!("register: {e}"));
                            break;
                        }
                        conns[k] = Some(PubConn {
                            sock,
                            connected: true,
                            out: Vec::new(),
                            inbuf: Vec::new(),
                            busy: None,
                        });
                    }
                    Err(e) => {
                        note(&mut out, format!("publish connect: {e}"));
                        next += 1;
                        continue;
                    }
                }
            }
            let pc = conns[k].as_mut().unwrap();
            out.max_lag = out.max_lag.max(now.saturating_duration_since(due));
            pc.out = publish_request(&c, now_ns());
            pc.busy = Some(Instant::now());
            out.sent += 1;
            next += 1;
            match service(pc, &mut rbuf, &mut out) {
                Ok(true) => {}
                Ok(false) => conns[k] = None,
                Err(e) => {
                    note(&mut out, e);
                    conns[k] = None;
                }
            }
        }
        let in_flight = conns
            .iter()
            .filter(|x| matches!(x, Some(pc) if pc.busy.is_some()))
            .count();
        out.max_in_flight = out.max_in_flight.max(in_flight);
        let now = Instant::now();
        let sending_done = stopping || next >= planned || now >= end;
        if sending_done && (in_flight == 0 || now >= end + response_grace || stopping) {
            if in_flight > 0 {
                note(
                    &mut out,
                    format!("{in_flight} publish request(s) unanswered at the end"),
                );
            }
            break;
        }
        let mut timeout = Duration::from_millis(20);
        if !sending_done && in_flight < conns.len() {
            // A connection is free: sleep until the next event is due. (When every connection
            // is busy, only a response can free one: wait for it instead of spinning.)
            let due = start + Duration::from_nanos((next as f64 * 1e9 / c.rate) as u64);
            timeout = timeout.min(due.saturating_duration_since(now));
        }
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                note(&mut out, format!("poll: {e}"));
                break;
            }
        }
        for ev in events.iter() {
            let k = ev.token().0;
            let Some(pc) = conns[k].as_mut() else {
                continue;
            };
            match service(pc, &mut rbuf, &mut out) {
                Ok(true) => {}
                Ok(false) => conns[k] = None,
                Err(e) => {
                    note(&mut out, e);
                    conns[k] = None;
                }
            }
        }
    }
    out.elapsed = c.duration;
    out
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

fn wait_rss_stable(pid: i32, timeout: Duration) -> Res<(u64, f64, bool)> {
    let t0 = Instant::now();
    let mut window: VecDeque<u64> = VecDeque::new();
    loop {
        let r = rss_kib(pid)?;
        window.push_back(r);
        if window.len() > 5 {
            window.pop_front();
        }
        // stable: 5 samples over 2 s within 64 KiB of each other
        if window.len() == 5 {
            let (lo, hi) = (window.iter().min().unwrap(), window.iter().max().unwrap());
            if hi - lo <= 64 {
                return Ok((r, t0.elapsed().as_secs_f64(), true));
            }
        }
        if t0.elapsed() > timeout || interrupted() {
            return Ok((r, t0.elapsed().as_secs_f64(), false));
        }
        thread::sleep(Duration::from_millis(500));
    }
}

struct IdleResult {
    round: usize,
    conns: usize,
    ready: usize,
    failed: usize,
    dropped: usize,
    retries: usize,
    setup_s: f64,
    handshakes_per_s: f64,
    rss_before: u64,
    rss_after: u64,
    settle_s: f64,
    settled: bool,
    per_conn_bytes: f64,
    rss_closed: u64,
    server_cpu_setup_ms: f64,
    loadgen_cpu_setup_pct: f64,
    setup_hist: Histogram,
    concurrency: usize,
    first_err: Option<String>,
}

/// Against the first node only (in Redis mode too: an idle connection does not involve Redis).
fn run_idle(
    dep: &mut Deployment,
    a: &Args,
    tr: Transport,
    srcs: &mut SrcAlloc,
    round: usize,
) -> Res<IdleResult> {
    let deadline = Instant::now() + Duration::from_secs_f64(a.deadline);
    let n = a.conns;
    let pid = dep.primary().pid;
    let name = label(dep.kind, dep.mode, tr, a);
    eprintln!("[{name}] idle: opening {n} {} connections…", tr.long());
    let (rss_before, _, _) = wait_rss_stable(pid, Duration::from_secs(5))?;
    let self_pid = std::process::id() as i32;
    let (cpu0, self0, w0) = (cpu_ticks(pid)?, cpu_ticks(self_pid)?, Instant::now());
    let set = ConnSet::start(&dep.nodes[..1], a, tr, n, srcs)?;
    set.wait_ready(dep, deadline)?;
    let (cpu1, self1, wall) = (
        cpu_ticks(pid)?,
        cpu_ticks(self_pid)?,
        w0.elapsed().as_secs_f64(),
    );
    let tck = clk_tck();
    let sh = set.sh.clone();
    let ready = sh.ready.load(Relaxed);
    let failed = sh.failed.load(Relaxed);
    let setup_s = sh.last_ready_ns.load(Relaxed) as f64 / 1e9;
    eprintln!(
        "[{name}] idle: {ready} ready, {failed} failed in {setup_s:.3} s; waiting for RSS to settle…"
    );
    let settle = Duration::from_secs_f64(a.settle_timeout)
        .min(deadline.saturating_duration_since(Instant::now()));
    let (rss_after, settle_s, settled) = wait_rss_stable(pid, settle)?;
    dep.check_alive()?;
    let dropped = sh.dropped.load(Relaxed);
    let retries = sh.retries.load(Relaxed);
    let first_err = set.first_err();
    let setup = set.finish().setup;
    let settle = Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now()));
    let (rss_closed, _, _) = wait_rss_stable(pid, settle)?;
    dep.check_alive()?;
    if ready == 0 {
        return Err(format!(
            "no connection became ready: {}",
            first_err.unwrap_or_default()
        ));
    }
    Ok(IdleResult {
        round,
        conns: n,
        ready,
        failed,
        dropped,
        retries,
        setup_s,
        handshakes_per_s: if setup_s > 0.0 {
            ready as f64 / setup_s
        } else {
            0.0
        },
        rss_before,
        rss_after,
        settle_s,
        settled,
        per_conn_bytes: (rss_after as f64 - rss_before as f64) * 1024.0 / ready as f64,
        rss_closed,
        server_cpu_setup_ms: (cpu1 - cpu0) as f64 * 1000.0 / tck,
        loadgen_cpu_setup_pct: (self1 - self0) as f64 / tck / wall * 100.0,
        setup_hist: setup,
        concurrency: a.connect_concurrency,
        first_err,
    })
}

struct FanoutResult {
    round: usize,
    subs: usize,
    ready: usize,
    rate: f64,
    duration: f64,
    planned: u64,
    sent: u64,
    published_ok: u64,
    publish_errors: u64,
    publish_rate: f64,
    pub_max_lag_us: u64,
    pub_max_in_flight: usize,
    pub_rtt_p50_us: u64,
    pub_rtt_p99_us: u64,
    expected: u64,
    received: u64,
    lost: u64,
    extra: u64,
    stale: u64,
    dropped: usize,
    /// of `dropped`, announced as slow consumers (SSE `event: slow`, WebSocket close 4008)
    slow_closed: usize,
    deliveries_per_s: f64,
    hist: Histogram,
    cpu_ms: f64,
    cpu_per_delivery_us: f64,
    quiet_cpu_ms_per_s: f64,
    window_s: f64,
    rss_before: u64,
    rss_end: u64,
    loadgen_cpu_pct: f64,
    /// whole box, in % of one core (200 % = both cores busy)
    box_busy_pct: f64,
    drain_s: f64,
    first_err: Option<String>,
    /// Redis mode: per node (empty for one server)
    nodes: Vec<NodeFig>,
    /// Redis mode: redis-server's CPU over the same window
    redis_cpu_ms: Option<f64>,
    /// Redis mode: redis-server's CPU in the quiet baseline, ms/s
    redis_quiet_ms_per_s: Option<f64>,
    redis_rss_end: Option<u64>,
}

/// One node's share of a fanout run (Redis mode).
struct NodeFig {
    name: String,
    addr: SocketAddr,
    subs: usize,
    ready: usize,
    expected: u64,
    hist: Histogram,
    cpu_ms: f64,
    rss_end: u64,
}

impl FanoutResult {
    /// CPU of the redix server(s) over the window, in % of one core
    fn server_pct(&self) -> f64 {
        self.cpu_ms / self.window_s / 10.0
    }
    fn redis_pct(&self) -> f64 {
        self.redis_cpu_ms.unwrap_or(0.0) / self.window_s / 10.0
    }
    /// Box CPU neither the servers (redix, redis-server) nor the generator used.
    fn other_pct(&self) -> f64 {
        (self.box_busy_pct - self.server_pct() - self.redis_pct() - self.loadgen_cpu_pct).max(0.0)
    }
}

/// utime + stime of each process, in clock ticks.
fn ticks_of(procs: &[(String, i32)]) -> Res<Vec<u64>> {
    procs.iter().map(|&(_, pid)| cpu_ticks(pid)).collect()
}

/// Subscribers split over the deployment's nodes, the publisher on the first node. In Redis
/// mode the redix nodes' CPU is "server CPU" (per node, and together per delivery), redis-server's
/// is reported beside it.
fn run_fanout(
    dep: &mut Deployment,
    a: &Args,
    tr: Transport,
    srcs: &mut SrcAlloc,
    sr: SubRate,
    round: usize,
) -> Res<FanoutResult> {
    let SubRate { subs, rate } = sr;
    let deadline = Instant::now() + Duration::from_secs_f64(a.deadline);
    let name = label(dep.kind, dep.mode, tr, a);
    let tck = clk_tck();
    // the redix nodes (or the one server) first, then redis-server
    let procs = dep.procs();
    let nn = dep.nodes.len();
    let node_ms = |t0: &[u64], t1: &[u64]| -> Vec<f64> {
        t0.iter()
            .zip(t1)
            .map(|(a, b)| (b - a) as f64 * 1000.0 / tck)
            .collect()
    };
    let split = if nn > 1 {
        format!(" over {nn} nodes")
    } else {
        String::new()
    };
    eprintln!("[{name}] fanout {subs}×{rate}/s: opening {subs} subscribers{split}…");
    let set = ConnSet::start(&dep.nodes, a, tr, subs, srcs)?;
    set.wait_ready(dep, deadline)?;
    let sh = set.sh.clone();
    let ready = sh.ready.load(Relaxed);
    if ready == 0 {
        return Err(format!(
            "no subscriber became ready: {}",
            set.first_err().unwrap_or_default()
        ));
    }
    thread::sleep(Duration::from_millis(500));
    // Quiet baseline: server CPU with the subscribers connected and nothing published (the
    // redix nodes together; redis-server apart).
    let q0 = (ticks_of(&procs)?, Instant::now());
    thread::sleep(Duration::from_secs(2));
    let quiet: Vec<f64> = node_ms(&q0.0, &ticks_of(&procs)?)
        .iter()
        .map(|m| m / q0.1.elapsed().as_secs_f64())
        .collect();
    let quiet_ms_per_s: f64 = quiet[..nn].iter().sum();
    let rss_before: u64 = dep.nodes.iter().map(|n| rss_kib(n.pid)).sum::<Res<u64>>()?;
    let self_pid = std::process::id() as i32;
    let cpu0 = ticks_of(&procs)?;
    let self0 = cpu_ticks(self_pid)?;
    let box0 = box_cpu();
    let w0 = Instant::now();
    let pub_start = now_ns();
    sh.pub_start_ns.store(pub_start, Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = PubCfg {
        kind: dep.kind,
        addr: dep.primary().addr,
        channel: a.channel.clone(),
        rate,
        duration: Duration::from_secs_f64(a.duration),
        payload_bytes: a.payload_bytes,
        max_conns: a.pub_conns,
        deadline,
        stop: stop.clone(),
    };
    eprintln!(
        "[{name}] fanout {subs}×{rate}/s: {ready} subscribers ready; publishing for {} s…",
        a.duration
    );
    let ph = thread::Builder::new()
        .name("publisher".into())
        .spawn(move || publisher(cfg))
        .map_err(|e| e.to_string())?;
    while !ph.is_finished() {
        if let Err(e) = dep.check_alive() {
            stop.store(true, Relaxed);
            let _ = ph.join();
            return Err(e);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let p = ph
        .join()
        .map_err(|_| "publisher thread panicked".to_string())?;
    let expected = p.ok * ready as u64;
    // drain: until every delivery arrived, or no progress for 3 s, or the drain timeout
    let d0 = Instant::now();
    let drain_until = (d0 + Duration::from_secs_f64(a.drain_timeout)).min(deadline);
    let (mut last, mut last_change) = (sh.events.load(Relaxed), Instant::now());
    loop {
        let ev = sh.events.load(Relaxed);
        if ev >= expected || Instant::now() > drain_until || interrupted() {
            break;
        }
        if ev != last {
            last = ev;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(3) {
            break;
        }
        dep.check_alive()?;
        thread::sleep(Duration::from_millis(5));
    }
    let drain_s = d0.elapsed().as_secs_f64();
    let cpu1 = ticks_of(&procs)?;
    let self1 = cpu_ticks(self_pid)?;
    let box1 = box_cpu();
    let wall = w0.elapsed().as_secs_f64();
    let rss_end_each = dep
        .nodes
        .iter()
        .map(|n| rss_kib(n.pid))
        .collect::<Res<Vec<u64>>>()?;
    let redis_rss_end = dep.redis.as_ref().map(|r| rss_kib(r.pid)).transpose()?;
    dep.check_alive()?;
    let first_err = set.first_err().or(p.first_err.clone());
    let dropped = sh.dropped.load(Relaxed);
    let slow_closed = sh.slow_closed.load(Relaxed);
    let stale = sh.stale.load(Relaxed);
    let last_recv = sh.last_recv_ns.load(Relaxed);
    let node_ready: Vec<usize> = sh.node_ready.iter().map(|r| r.load(Relaxed)).collect();
    let per_node = set.per_node.clone();
    let hists = set.finish();
    let hist = hists.lat;
    let received = hist.n;
    let ms_each = node_ms(&cpu0, &cpu1);
    let cpu_ms: f64 = ms_each[..nn].iter().sum();
    let span = (last_recv.saturating_sub(pub_start)) as f64 / 1e9;
    let nodes = if nn > 1 {
        hists
            .node_lat
            .into_iter()
            .enumerate()
            .map(|(i, h)| NodeFig {
                name: node_name(i),
                addr: dep.nodes[i].addr,
                subs: per_node[i],
                ready: node_ready[i],
                expected: p.ok * node_ready[i] as u64,
                hist: h,
                cpu_ms: ms_each[i],
                rss_end: rss_end_each[i],
            })
            .collect()
    } else {
        vec![]
    };
    Ok(FanoutResult {
        round,
        subs,
        ready,
        rate,
        duration: a.duration,
        planned: p.planned,
        sent: p.sent,
        published_ok: p.ok,
        publish_errors: p.errors,
        publish_rate: p.sent as f64 / p.elapsed.as_secs_f64().max(1e-9),
        pub_max_lag_us: p.max_lag.as_micros() as u64,
        pub_max_in_flight: p.max_in_flight,
        pub_rtt_p50_us: p.rtt.percentile(50.0),
        pub_rtt_p99_us: p.rtt.percentile(99.0),
        expected,
        received,
        lost: expected.saturating_sub(received),
        extra: received.saturating_sub(expected),
        stale,
        dropped,
        slow_closed,
        deliveries_per_s: if span > 0.0 {
            received as f64 / span
        } else {
            0.0
        },
        cpu_ms,
        cpu_per_delivery_us: per_delivery_us(cpu_ms, received),
        quiet_cpu_ms_per_s: quiet_ms_per_s,
        window_s: wall,
        rss_before,
        rss_end: rss_end_each.iter().sum(),
        loadgen_cpu_pct: (self1 - self0) as f64 / tck / wall * 100.0,
        box_busy_pct: box_busy_pct(box0, box1),
        drain_s,
        hist,
        first_err,
        nodes,
        redis_cpu_ms: dep.redis.as_ref().map(|_| ms_each[nn]),
        redis_quiet_ms_per_s: quiet.get(nn).copied(),
        redis_rss_end,
    })
}

/// CPU milliseconds per delivery, in µs.
fn per_delivery_us(cpu_ms: f64, deliveries: u64) -> f64 {
    if deliveries > 0 {
        cpu_ms * 1000.0 / deliveries as f64
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------
// Reporting
// ---------------------------------------------------------------------------------------------

/// The server's name: "redix", "nchan", or "redix-redis" for a Redis-mode cluster.
fn base_name(kind: Kind, mode: Mode) -> &'static str {
    match (kind, mode) {
        (Kind::Redix, Mode::Redis) => "redix-redis",
        _ => kind.name(),
    }
}

/// "redix" when the run is SSE only (as before --transport existed), else "redix sse" / "redix ws".
fn label(kind: Kind, mode: Mode, tr: Transport, a: &Args) -> String {
    let base = base_name(kind, mode);
    if a.transport == TransportSel::Sse {
        base.to_string()
    } else {
        format!("{base} {}", tr.tag())
    }
}

fn idle_json(kind: Kind, mode: Mode, tr: Transport, r: &IdleResult) -> Value {
    json!({
        "bench": "load", "target": kind.name(), "mode": mode.tag(), "transport": tr.tag(), "scenario": "idle", "round": r.round,
        "conns": r.conns, "ready": r.ready, "failed": r.failed, "dropped": r.dropped, "retries": r.retries,
        "setup_s": round(r.setup_s, 4), "handshakes_per_s": r.handshakes_per_s.round(),
        "rss_before_kib": r.rss_before, "rss_after_kib": r.rss_after, "rss_settled": r.settled,
        "settle_s": round(r.settle_s, 1),
        "rss_per_conn_bytes": r.per_conn_bytes.round(), "rss_per_conn_kib": round(r.per_conn_bytes / 1024.0, 3),
        "rss_after_close_kib": r.rss_closed,
        "server_cpu_setup_ms": round(r.server_cpu_setup_ms, 1),
        "setup_latency_us": {"p50": r.setup_hist.percentile(50.0), "p99": r.setup_hist.percentile(99.0), "max": r.setup_hist.max}, "loadgen_cpu_setup_pct": r.loadgen_cpu_setup_pct.round(), "first_error": r.first_err,
    })
}

fn fanout_json(kind: Kind, mode: Mode, tr: Transport, r: &FanoutResult) -> Value {
    let mut v = json!({
        "bench": "load", "target": kind.name(), "mode": mode.tag(), "transport": tr.tag(), "scenario": "fanout", "round": r.round,
        "subs": r.subs, "subs_ready": r.ready, "rate": r.rate, "duration_s": r.duration,
        "planned": r.planned, "sent": r.sent, "published_ok": r.published_ok, "publish_errors": r.publish_errors,
        "publish_rate": round(r.publish_rate, 1), "publish_max_lag_us": r.pub_max_lag_us, "publish_max_in_flight": r.pub_max_in_flight,
        "publish_rtt_p50_us": r.pub_rtt_p50_us, "publish_rtt_p99_us": r.pub_rtt_p99_us,
        "expected": r.expected, "received": r.received, "lost": r.lost, "extra": r.extra, "stale": r.stale,
        "dropped_streams": r.dropped, "slow_consumer_closes": r.slow_closed,
        "deliveries_per_s": r.deliveries_per_s.round(),
        "latency_us": {"p50": r.hist.percentile(50.0), "p90": r.hist.percentile(90.0),
                       "p99": r.hist.percentile(99.0), "max": r.hist.max, "mean": r.hist.mean().round()},
        "server_cpu_ms": round(r.cpu_ms, 1), "cpu_window_s": round(r.window_s, 2), "cpu_per_delivery_us": round(r.cpu_per_delivery_us, 3),
        "server_quiet_cpu_ms_per_s": round(r.quiet_cpu_ms_per_s, 1),
        "rss_before_kib": r.rss_before, "rss_end_kib": r.rss_end,
        "loadgen_cpu_pct": r.loadgen_cpu_pct.round(), "box_busy_pct": r.box_busy_pct.round(),
        "other_cpu_pct": r.other_pct().round(), "drain_s": round(r.drain_s, 2),
        "first_error": r.first_err,
    });
    if let Some(redis_ms) = r.redis_cpu_ms {
        v["redis_cpu_ms"] = json!(round(redis_ms, 1));
        v["redis_quiet_cpu_ms_per_s"] = json!(round(r.redis_quiet_ms_per_s.unwrap_or(0.0), 1));
        v["redis_cpu_per_delivery_us"] = json!(round(per_delivery_us(redis_ms, r.received), 3));
        v["redis_cpu_per_event_us"] = json!(round(per_delivery_us(redis_ms, r.published_ok), 1));
        v["redis_rss_end_kib"] = json!(r.redis_rss_end);
        v["nodes"] = r
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "node": n.name, "addr": n.addr.to_string(), "subs": n.subs, "subs_ready": n.ready,
                    "expected": n.expected, "received": n.hist.n, "lost": n.expected.saturating_sub(n.hist.n),
                    "latency_us": {"p50": n.hist.percentile(50.0), "p99": n.hist.percentile(99.0), "max": n.hist.max},
                    "server_cpu_ms": round(n.cpu_ms, 1),
                    "cpu_per_delivery_us": round(per_delivery_us(n.cpu_ms, n.hist.n), 3),
                    "rss_end_kib": n.rss_end,
                })
            })
            .collect();
    }
    v
}

fn round(v: f64, d: i32) -> f64 {
    let m = 10f64.powi(d);
    (v * m).round() / m
}

fn print_idle(name: &str, tr: Transport, r: &IdleResult) {
    let mut s = String::new();
    let round = if r.round > 1 {
        format!(" (round {})", r.round)
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "\n== {} idle: {} {} connections to one channel{round} ==",
        name,
        r.conns,
        tr.long()
    );
    let _ = writeln!(
        s,
        "  ready               {} / {}   (failed {}, dropped later {}, retried attempts {})",
        r.ready, r.conns, r.failed, r.dropped, r.retries
    );
    let _ = writeln!(
        s,
        "  setup               {:.3} s  →  {} handshakes/s (server CPU {:.0} ms, load generator {:.0} % of one core)",
        r.setup_s,
        thousands(r.handshakes_per_s),
        r.server_cpu_setup_ms,
        r.loadgen_cpu_setup_pct
    );
    let _ = writeln!(
        s,
        "  per connection      connect → ready p50 {} ms, p99 {} ms, max {} ms ({} at once)",
        ms(r.setup_hist.percentile(50.0)),
        ms(r.setup_hist.percentile(99.0)),
        ms(r.setup_hist.max),
        r.concurrency
    );
    let _ = writeln!(
        s,
        "  server RSS          before {} KiB, after {} KiB ({}settled after {:.1} s)",
        thousands(r.rss_before as f64),
        thousands(r.rss_after as f64),
        if r.settled { "" } else { "NOT " },
        r.settle_s
    );
    let _ = writeln!(
        s,
        "  RSS per idle conn   {} bytes = {:.2} KiB",
        thousands(r.per_conn_bytes),
        r.per_conn_bytes / 1024.0
    );
    let _ = writeln!(
        s,
        "  RSS after closing   {} KiB",
        thousands(r.rss_closed as f64)
    );
    if let Some(e) = &r.first_err {
        let _ = writeln!(s, "  first error         {e}");
    }
    print!("{s}");
}

fn print_fanout(name: &str, tr: Transport, r: &FanoutResult) {
    let mut s = String::new();
    let h = &r.hist;
    let _ = writeln!(
        s,
        "\n== {} fanout: {} {}subscribers{} × {} events/s × {} s{} ==",
        name,
        r.subs,
        match tr {
            Transport::Sse => "",
            Transport::Ws => "WebSocket ",
        },
        if r.nodes.is_empty() {
            String::new()
        } else {
            format!(" over {} nodes (publishing to node A)", r.nodes.len())
        },
        r.rate,
        r.duration,
        if r.round > 1 {
            format!(" (round {})", r.round)
        } else {
            String::new()
        }
    );
    let _ = writeln!(s, "  subscribers ready   {} / {}", r.ready, r.subs);
    let _ = writeln!(
        s,
        "  published           {} ok of {} planned ({} not sent within the {} s), {} errors; {:.1} events/s achieved; max pacing lag {} ms; publish RTT p50/p99 {}/{} ms; up to {} in flight",
        r.published_ok,
        r.planned,
        r.planned - r.sent,
        r.duration,
        r.publish_errors,
        r.publish_rate,
        ms(r.pub_max_lag_us),
        ms(r.pub_rtt_p50_us),
        ms(r.pub_rtt_p99_us),
        r.pub_max_in_flight
    );
    let lost_pct = if r.expected > 0 {
        r.lost as f64 * 100.0 / r.expected as f64
    } else {
        0.0
    };
    let _ = writeln!(
        s,
        "  deliveries          expected {}, received {}, lost {} ({:.3} %), extra {}, stale {}, streams dropped {}{}",
        thousands(r.expected as f64),
        thousands(r.received as f64),
        thousands(r.lost as f64),
        lost_pct,
        r.extra,
        r.stale,
        r.dropped,
        if r.slow_closed > 0 {
            format!(" ({} of them as slow consumers)", r.slow_closed)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "  delivery rate       {} deliveries/s (drain {:.2} s after the last publish)",
        thousands(r.deliveries_per_s),
        r.drain_s
    );
    let _ = writeln!(
        s,
        "  latency (ms)        p50 {}  p90 {}  p99 {}  max {}  mean {}",
        ms(h.percentile(50.0)),
        ms(h.percentile(90.0)),
        ms(h.percentile(99.0)),
        ms(h.max),
        ms(h.mean() as u64)
    );
    let _ = writeln!(
        s,
        "  server CPU          {:.0} ms over {:.1} s  →  {:.3} µs per delivery (quiet baseline before publishing: {:.1} ms/s){}",
        r.cpu_ms,
        r.window_s,
        r.cpu_per_delivery_us,
        r.quiet_cpu_ms_per_s,
        if r.nodes.is_empty() {
            String::new()
        } else {
            format!("; the {} redix nodes together", r.nodes.len())
        }
    );
    for n in &r.nodes {
        let _ = writeln!(
            s,
            "  node {}              {} / {} subscribers ready; received {} of {} (lost {}); latency p50 {}  p99 {}  max {} ms; CPU {:.0} ms → {:.3} µs per delivery; RSS {} KiB ({})",
            n.name,
            n.ready,
            n.subs,
            thousands(n.hist.n as f64),
            thousands(n.expected as f64),
            thousands(n.expected.saturating_sub(n.hist.n) as f64),
            ms(n.hist.percentile(50.0)),
            ms(n.hist.percentile(99.0)),
            ms(n.hist.max),
            n.cpu_ms,
            per_delivery_us(n.cpu_ms, n.hist.n),
            thousands(n.rss_end as f64),
            n.addr
        );
    }
    if let Some(redis_ms) = r.redis_cpu_ms {
        let _ = writeln!(
            s,
            "  redis-server CPU    {:.0} ms  →  {:.3} µs per delivery, {:.1} µs per published event (quiet baseline: {:.1} ms/s); RSS {} KiB at the end",
            redis_ms,
            per_delivery_us(redis_ms, r.received),
            per_delivery_us(redis_ms, r.published_ok),
            r.redis_quiet_ms_per_s.unwrap_or(0.0),
            thousands(r.redis_rss_end.unwrap_or(0) as f64)
        );
    }
    let _ = writeln!(
        s,
        "  server RSS          {} KiB before publishing, {} KiB at the end{}",
        thousands(r.rss_before as f64),
        thousands(r.rss_end as f64),
        if r.nodes.is_empty() {
            ""
        } else {
            " (redix nodes together)"
        }
    );
    let redis_part = if r.redis_cpu_ms.is_some() {
        format!("redis-server {:.0} %, ", r.redis_pct())
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "  load generator CPU  {:.0} % of one core; whole box busy {:.0} % of one core ({} cores): server {:.0} %, {redis_part}generator {:.0} %, everything else {:.0} %",
        r.loadgen_cpu_pct,
        r.box_busy_pct,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        r.server_pct(),
        r.loadgen_cpu_pct,
        r.other_pct()
    );
    if let Some(e) = &r.first_err {
        let _ = writeln!(s, "  first error         {e}");
    }
    print!("{s}");
}

struct TargetResult {
    kind: Kind,
    mode: Mode,
    transport: Transport,
    /// one per round; the comparison table shows round 1 (a fresh server)
    idle: Vec<IdleResult>,
    fanout: Vec<FanoutResult>,
    errors: Vec<String>,
    note: String,
    exit: String,
}

fn comparison_table(results: &[TargetResult], a: &Args) -> String {
    let mut rows: Vec<(String, String, Vec<String>)> = Vec::new();
    let cell = |f: &dyn Fn(&TargetResult) -> Option<String>| -> Vec<String> {
        results
            .iter()
            .map(|r| f(r).unwrap_or_else(|| "—".into()))
            .collect()
    };
    if a.scenario != ScenarioSel::Fanout {
        let (what, target) = match a.transport {
            TransportSel::Sse => ("SSE conn", "≤ 1 KiB"),
            TransportSel::Ws => ("WebSocket", "≤ 1.5 KiB"),
            TransportSel::Both => ("conn", "≤ 1 KiB SSE, ≤ 1.5 KiB WS"),
        };
        rows.push((
            format!("idle: RSS per idle {what} ({} conns)", a.conns),
            target.into(),
            cell(&|r| {
                r.idle.first().map(|i| {
                    format!(
                        "{:.2} KiB ({} B)",
                        i.per_conn_bytes / 1024.0,
                        thousands(i.per_conn_bytes)
                    )
                })
            }),
        ));
        rows.push((
            "idle: connection setup".into(),
            "≥ 20k handshakes/s".into(),
            cell(&|r| {
                r.idle
                    .first()
                    .map(|i| format!("{}/s", thousands(i.handshakes_per_s)))
            }),
        ));
        rows.push((
            "idle: connections ready / failed".into(),
            "".into(),
            cell(&|r| {
                r.idle
                    .first()
                    .map(|i| format!("{} / {}", i.ready, i.failed))
            }),
        ));
    }
    let any_redis = results.iter().any(|r| r.mode == Mode::Redis);
    if a.scenario != ScenarioSel::Idle {
        for SubRate { subs, rate } in fanout_plan(a) {
            let tag = format!("fanout {subs}×{rate}/s");
            let std1k = subs == 1000;
            let (t_lat, t_cpu, t_rate) = match (std1k, rate as u64) {
                (true, 20) => ("≤ 3 ms", "≤ 1.5 µs", ""),
                (true, 1000) => ("≤ 100 ms", "≤ 0.5 µs", "≥ 900k/s"),
                _ => ("", "", ""),
            };
            let g = |f: &dyn Fn(&FanoutResult) -> String| -> Vec<String> {
                results
                    .iter()
                    .map(|r| {
                        r.fanout
                            .iter()
                            .find(|x| x.subs == subs && x.rate == rate && x.round == 1)
                            .map(f)
                            .unwrap_or_else(|| "—".into())
                    })
                    .collect()
            };
            rows.push((
                format!("{tag}: deliveries/s received"),
                t_rate.into(),
                g(&|f| format!("{}/s", thousands(f.deliveries_per_s))),
            ));
            rows.push((
                format!("{tag}: received / expected (lost)"),
                "no loss".into(),
                g(&|f| {
                    format!(
                        "{} / {} ({})",
                        thousands(f.received as f64),
                        thousands(f.expected as f64),
                        thousands(f.lost as f64)
                    )
                }),
            ));
            rows.push((
                format!("{tag}: events published/s"),
                format!("{rate}/s"),
                g(&|f| format!("{:.1}/s", f.publish_rate)),
            ));
            rows.push((
                format!("{tag}: latency p50 / p90 / p99 / max"),
                if t_lat.is_empty() {
                    String::new()
                } else {
                    format!("p99 {t_lat}")
                },
                g(&|f| {
                    format!(
                        "{} / {} / {} / {} ms",
                        ms(f.hist.percentile(50.0)),
                        ms(f.hist.percentile(90.0)),
                        ms(f.hist.percentile(99.0)),
                        ms(f.hist.max)
                    )
                }),
            ));
            if any_redis {
                rows.push((
                    format!("{tag}: latency p50 / p99 per node (A; B; …)"),
                    "".into(),
                    g(&|f| {
                        let v: Vec<String> = f
                            .nodes
                            .iter()
                            .map(|n| match n.hist.n {
                                0 => format!("{}: nothing received", n.name),
                                _ => format!(
                                    "{}: {} / {} ms",
                                    n.name,
                                    ms(n.hist.percentile(50.0)),
                                    ms(n.hist.percentile(99.0))
                                ),
                            })
                            .collect();
                        if v.is_empty() {
                            "—".into()
                        } else {
                            v.join("; ")
                        }
                    }),
                ));
            }
            rows.push((
                format!("{tag}: server CPU per delivery"),
                t_cpu.into(),
                g(&|f| format!("{:.3} µs", f.cpu_per_delivery_us)),
            ));
            if any_redis {
                rows.push((
                    format!("{tag}: redis-server CPU per delivery / per event"),
                    "".into(),
                    g(&|f| match f.redis_cpu_ms {
                        Some(m) => format!(
                            "{:.3} µs / {:.1} µs",
                            per_delivery_us(m, f.received),
                            per_delivery_us(m, f.published_ok)
                        ),
                        None => "—".into(),
                    }),
                ));
            }
            rows.push((
                format!("{tag}: server RSS at end"),
                "".into(),
                g(&|f| format!("{} KiB", thousands(f.rss_end as f64))),
            ));
            rows.push((
                format!("{tag}: load generator CPU / whole box busy"),
                "".into(),
                g(&|f| format!("{:.0} % / {:.0} %", f.loadgen_cpu_pct, f.box_busy_pct)),
            ));
        }
    }
    let mut s = String::from("\n| figure | target |");
    for r in results {
        let _ = write!(s, " {} |", label(r.kind, r.mode, r.transport, a));
    }
    s.push_str("\n|---|---|");
    for _ in results {
        s.push_str("---|");
    }
    s.push('\n');
    for (f, t, cells) in rows {
        let _ = write!(s, "| {f} | {t} |");
        for c in cells {
            let _ = write!(s, " {c} |");
        }
        s.push('\n');
    }
    s
}

/// With --rounds > 1: one row per target and round, to show the spread.
fn rounds_table(results: &[TargetResult], a: &Args) -> String {
    let plan = fanout_plan(a);
    let mut s = String::from("\n| target | round | idle RSS/conn | idle setup |");
    for SubRate { subs, rate } in &plan {
        let _ = write!(
            s,
            " {subs}×{rate}/s: deliveries/s, p50 / p99, CPU/delivery, other CPU |"
        );
    }
    s.push_str("\n|---|---|---|---|");
    for _ in &plan {
        s.push_str("---|");
    }
    s.push('\n');
    for t in results {
        for round in 1..=a.rounds.max(1) {
            let idle = t.idle.iter().find(|i| i.round == round);
            let _ = write!(
                s,
                "| {} | {round} | {} | {} |",
                label(t.kind, t.mode, t.transport, a),
                idle.map(|i| format!("{} B", thousands(i.per_conn_bytes)))
                    .unwrap_or_else(|| "—".into()),
                idle.map(|i| format!("{}/s", thousands(i.handshakes_per_s)))
                    .unwrap_or_else(|| "—".into())
            );
            for &SubRate { subs, rate } in &plan {
                let cell = t
                    .fanout
                    .iter()
                    .find(|f| f.round == round && f.subs == subs && f.rate == rate)
                    .map(|f| {
                        format!(
                            "{}/s, {} / {} ms, {:.2} µs, {:.0} %",
                            thousands(f.deliveries_per_s),
                            ms(f.hist.percentile(50.0)),
                            ms(f.hist.percentile(99.0)),
                            f.cpu_per_delivery_us,
                            f.other_pct()
                        )
                    });
                let _ = write!(s, " {} |", cell.unwrap_or_else(|| "—".into()));
            }
            s.push('\n');
        }
    }
    s
}

fn emit_json(v: &Value, a: &Args) {
    let line = v.to_string();
    println!("{line}");
    if let Some(p) = &a.json_out {
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(p) {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn run(a: &Args) -> Res<bool> {
    let kinds = match a.target {
        TargetSel::Redix => vec![Kind::Redix],
        TargetSel::Nchan => vec![Kind::Nchan],
        TargetSel::Both => vec![Kind::Redix, Kind::Nchan],
    };
    let transports = match a.transport {
        TransportSel::Sse => vec![Transport::Sse],
        TransportSel::Ws => vec![Transport::Ws],
        TransportSel::Both => vec![Transport::Sse, Transport::Ws],
    };
    let modes = match a.mode {
        ModeSel::Embedded => vec![Mode::Embedded],
        ModeSel::Redis => vec![Mode::Redis],
        ModeSel::Both => vec![Mode::Embedded, Mode::Redis],
    };
    // Each server × transport (× mode, for redix) gets a freshly started server (idle RSS is
    // only comparable from a fresh process: a warm allocator reuses what earlier connections
    // left). Embedded and Redis mode of one transport run one after the other.
    let runs: Vec<(Kind, Transport, Mode)> = kinds
        .iter()
        .flat_map(|&k| transports.iter().map(move |&t| (k, t)))
        .flat_map(|(k, t)| {
            let ms = if k == Kind::Redix {
                modes.clone()
            } else {
                vec![Mode::Embedded]
            };
            ms.into_iter().map(move |m| (k, t, m))
        })
        .collect();
    let nofile = raise_nofile();
    let need = fanout_plan(a)
        .iter()
        .map(|p| p.subs)
        .fold(a.conns, usize::max)
        + 64;
    if nofile < need as u64 {
        return Err(format!(
            "open-file limit {nofile} is below the {need} this run needs; lower --conns/--subs"
        ));
    }
    let mut srcs = SrcAlloc { next: 2 };
    let mut results = Vec::new();
    let mut all_ok = true;
    for (kind, transport, mode) in runs {
        let name = label(kind, mode, transport, a);
        let mut tr = TargetResult {
            kind,
            mode,
            transport,
            idle: vec![],
            fanout: vec![],
            errors: vec![],
            note: String::new(),
            exit: String::new(),
        };
        let mut dep = match Deployment::start(kind, mode, a, transport) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("[{name}] cannot start: {e}");
                tr.errors.push(format!("start: {e}"));
                results.push(tr);
                all_ok = false;
                continue;
            }
        };
        tr.note = dep.note();
        // Is anything else busy on the box? (The figures assume it is not.)
        let b0 = box_cpu();
        thread::sleep(Duration::from_secs(1));
        let busy = box_busy_pct(b0, box_cpu());
        if busy > 15.0 {
            eprintln!("[{name}] WARNING: the box is already {busy:.0} % of one core busy before any load; figures will be noisy");
        }
        tr.note
            .push_str(&format!("; box busy before load: {busy:.0} % of one core"));
        eprintln!(
            "[{name}] {} — listening on {}, measuring pid(s) {:?}",
            dep.note(),
            dep.nodes
                .iter()
                .map(|n| n.addr.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            dep.procs().iter().map(|p| p.1).collect::<Vec<_>>()
        );
        let base = base_name(kind, mode);
        for round in 1..=a.rounds.max(1) {
            if a.rounds > 1 {
                eprintln!("[{name}] round {round} of {}", a.rounds);
            }
            if a.scenario != ScenarioSel::Fanout && !interrupted() {
                match run_idle(&mut dep, a, transport, &mut srcs, round) {
                    Ok(r) => {
                        print_idle(base, transport, &r);
                        emit_json(&idle_json(kind, mode, transport, &r), a);
                        tr.idle.push(r);
                    }
                    Err(e) => {
                        eprintln!("[{name}] idle failed: {e}");
                        tr.errors.push(format!("idle: {e}"));
                        if let Err(e) = dep.check_alive() {
                            tr.errors.push(format!("remaining scenarios skipped: {e}"));
                            break;
                        }
                    }
                }
                thread::sleep(Duration::from_secs(1));
            }
            if a.scenario != ScenarioSel::Idle && dep.check_alive().is_ok() {
                for sr in fanout_plan(a) {
                    if interrupted() {
                        break;
                    }
                    match run_fanout(&mut dep, a, transport, &mut srcs, sr, round) {
                        Ok(r) => {
                            print_fanout(base, transport, &r);
                            emit_json(&fanout_json(kind, mode, transport, &r), a);
                            tr.fanout.push(r);
                        }
                        Err(e) => {
                            let what = format!("fanout {}×{}/s", sr.subs, sr.rate);
                            eprintln!("[{name}] {what} failed: {e}");
                            tr.errors.push(format!("{what}: {e}"));
                            if dep.check_alive().is_err() {
                                break;
                            }
                        }
                    }
                    thread::sleep(Duration::from_secs(1));
                }
            }
        }
        tr.exit = dep.stop();
        eprintln!("[{name}] server: {}", tr.exit);
        all_ok &= tr.errors.is_empty();
        results.push(tr);
        if interrupted() {
            break;
        }
    }
    println!("{}", comparison_table(&results, a));
    if a.rounds > 1 {
        println!("{}", rounds_table(&results, a));
    }
    for r in &results {
        let name = label(r.kind, r.mode, r.transport, a);
        println!(
            "{name}: {}; {}",
            r.note,
            if r.exit.is_empty() { "-" } else { &r.exit }
        );
        for e in &r.errors {
            println!("{name} ERROR {e}");
        }
    }
    if interrupted() {
        return Err("interrupted".into());
    }
    Ok(all_ok)
}

fn main() {
    let args = Args::parse();
    if args.self_test {
        std::process::exit(if self_test() { 0 } else { 1 });
    }
    install_signal_handlers();
    let code = match run(&args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("load: {e}");
            2
        }
    };
    std::process::exit(code);
}

// ---------------------------------------------------------------------------------------------
// --self-test: the parsers and the histogram, without a network
// ---------------------------------------------------------------------------------------------

fn self_test() -> bool {
    let mut failures = 0;
    let mut check = |name: &str, ok: bool| {
        println!("{} {name}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            failures += 1;
        }
    };

    // histogram: buckets contiguous and monotonic, relative width ≤ 1/32
    let mut ok = true;
    for v in (0..200_000u64).chain((1..40).map(|k| (1u64 << k) + 12345)) {
        let i = Histogram::index(v);
        let up = Histogram::upper(i);
        let lo = if i == 0 {
            0
        } else {
            Histogram::upper(i - 1) + 1
        };
        ok &= lo <= v && v <= up && (up - lo) as f64 <= (lo as f64 / 32.0).max(0.0) + 1.0;
    }
    check("histogram buckets", ok);
    let mut h = Histogram::new();
    for v in 1..=10_000u64 {
        h.record(v);
    }
    let p50 = h.percentile(50.0);
    let p99 = h.percentile(99.0);
    check(
        "histogram percentiles",
        (5000..=5160).contains(&p50) && (9900..=10_000).contains(&p99) && h.max == 10_000,
    );

    check(
        "parse_t",
        parse_t(
            br#"data: {"type":"message","channel":"bench","id":"17","data":{"t":123,"pad":"xx"}}"#,
        ) == Some(123),
    );
    check(
        "parse_t missing",
        parse_t(br#"data: {"type":"x"}"#).is_none() && parse_t(b"data:").is_none(),
    );
    check(
        "parse_t Redis stream id",
        parse_t(br#"data: {"type":"message","channel":"bench","id":"1732412345678-3","data":{"t":9,"pad":"x"}}"#)
            == Some(9),
    );
    check(
        "--plan SUBSxRATE",
        parse_sub_rate("10000x100")
            == Ok(SubRate {
                subs: 10_000,
                rate: 100.0,
            })
            && parse_sub_rate("1000X0.5")
                == Ok(SubRate {
                    subs: 1000,
                    rate: 0.5,
                })
            && parse_sub_rate("1000").is_err()
            && parse_sub_rate("0x20").is_err()
            && parse_sub_rate("10x-1").is_err(),
    );
    check(
        "parse_t nchan",
        parse_t(br#"data: {"t": 42,"pad":"x:y"}"#) == Some(42)
            && parse_t(br#"data:{"a":1,"t":7}"#) == Some(7),
    );
    check(
        "find_nl",
        (0..40).all(|k| {
            let mut v = vec![b'a'; 40];
            v[k] = b'\n';
            find_nl(&v) == Some(k)
        }) && find_nl(b"abcdefghijklmnop").is_none(),
    );

    // SSE stream split at every position, plain and chunked; embedded-mode ids (numbers) and
    // Redis-mode ids (stream ids `ms-n`)
    let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n".to_vec();
    let sse_body = |id_of: &dyn Fn(u64) -> String| {
        let mut body = b"retry: 3000\n\n: ping\n\n".to_vec();
        for (n, t) in [(1u64, 1_000_000u64), (2, 2_000_000), (3, 3_000_000)] {
            let id = id_of(n);
            body.extend_from_slice(
                format!("id: {id}\nevent: message\ndata: {{\"type\":\"message\",\"channel\":\"bench\",\"id\":\"{id}\",\"data\":{{\"t\":{t},\"pad\":\"xx\"}}}}\n\n").as_bytes(),
            );
        }
        body.extend_from_slice(
            format!("id: {}\r\ndata: {{\"t\":4000000}}\r\n\r\n", id_of(4)).as_bytes(),
        );
        body
    };
    let body = sse_body(&|n| n.to_string());
    let mut chunked_body = Vec::new();
    for part in body.chunks(7) {
        chunked_body.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
        chunked_body.extend_from_slice(part);
        chunked_body.extend_from_slice(b"\r\n");
    }
    chunked_body.extend_from_slice(b"0\r\n\r\n");
    let chunked_head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let redis_body = sse_body(&|n| format!("1732412345678-{n}"));
    for (name, stream, nodes) in [
        ("plain", [head.clone(), body].concat(), 1),
        ("chunked", [chunked_head, chunked_body].concat(), 1),
        (
            "Redis stream ids, node B of 2",
            [head, redis_body].concat(),
            2,
        ),
    ] {
        let mut ok = true;
        for split in 1..stream.len() {
            let mut c = Conn::new(Ipv4Addr::LOCALHOST);
            c.st = St::Headers;
            let mut loc = Local::new(nodes, 1_500_000, 5_000_000);
            loc.node = nodes - 1;
            for piece in [&stream[..split], &stream[split..]] {
                for tiny in piece.chunks(if split % 3 == 0 { 1 } else { 4096 }) {
                    ok &= c.feed(tiny, &mut loc).is_ok();
                }
            }
            // t=1e6 is before pub_start → stale; 2e6, 3e6, 4e6 → latencies 3000, 2000, 1000 µs
            ok &= c.got_retry
                && loc.stale == 1
                && loc.events == 3
                && loc.hist.max == 3000
                && loc.hist.sum == 6000;
            // per node only with several nodes, and then on the connection's node
            ok &= match nodes {
                1 => loc.node_hist.is_empty(),
                _ => loc.node_hist[0].n == 0 && loc.node_hist[1].sum == 6000,
            };
        }
        check(&format!("SSE parser, {name}, every split"), ok);
    }
    let mut c = Conn::new(Ipv4Addr::LOCALHOST);
    c.st = St::Headers;
    let mut loc = Local::new(1, 0, 0);
    let before = c
        .feed(b"HTTP/1.1 200 OK\r\n\r\nretry: 10\n\n", &mut loc)
        .is_ok()
        && !c.slow;
    let fed = c
        .feed(
            b"id: 17-0\nevent: slow\ndata: {\"reason\":\"slow consumer\"}\n\n",
            &mut loc,
        )
        .is_ok();
    let slow_ok = before && fed && c.slow;
    check("SSE event: slow noticed", slow_ok);
    let mut c = Conn::new(Ipv4Addr::LOCALHOST);
    c.st = St::Headers;
    check(
        "non-200 rejected",
        c.feed(b"HTTP/1.1 429 Too Many Requests\r\n\r\n", &mut loc)
            .is_err(),
    );

    // WebSocket: handshake + frames split at every position, every length encoding, fragments
    // with a ping in between, pongs and the subscribe frame masked
    fn server_frame(fin: bool, op: u8, p: &[u8], long: bool) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 | op } else { op }];
        if long {
            f.push(127);
            f.extend_from_slice(&(p.len() as u64).to_be_bytes());
        } else if p.len() < 126 {
            f.push(p.len() as u8);
        } else {
            f.push(126);
            f.extend_from_slice(&(p.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(p);
        f
    }
    /// (opcode, unmasked payload) of every client frame; None if one is not masked
    fn client_frames(mut b: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
        let mut v = Vec::new();
        while let Some((hl, len)) = ws_header(b) {
            if b[1] & 0x80 == 0 || b[0] & 0x80 == 0 {
                return None;
            }
            let mask = &b[hl..hl + 4];
            let p = &b[hl + 4..hl + 4 + len as usize];
            v.push((
                b[0] & 0x0f,
                p.iter().enumerate().map(|(i, x)| x ^ mask[i & 3]).collect(),
            ));
            b = &b[hl + 4 + len as usize..];
        }
        b.is_empty().then_some(v)
    }
    let wcfg = Arc::new(WsCfg {
        head: "GET /ws HTTP/1.1\r\nHost: x\r\n".into(),
        subscribe: Some(br#"{"type":"subscribe","channel":"bench"}"#.to_vec()),
    });
    let new_ws_conn = || {
        let mut c = Conn::new(Ipv4Addr::LOCALHOST);
        let mut w = WsConn::new(wcfg.clone(), 42);
        w.reset();
        c.ws = Some(Box::new(w));
        c.st = St::Headers;
        c
    };
    // Redis-mode ids (`ms-n` strings) here; the SSE test has both kinds
    let msg = |t: u64, pad: usize| {
        format!(
            r#"{{"type":"message","channel":"bench","id":"{}-{}","data":{{"t":{t},"pad":"{}"}}}}"#,
            t / 1000,
            t % 7,
            "x".repeat(pad)
        )
        .into_bytes()
    };
    let mut frames = server_frame(
        true,
        1,
        br#"{"type":"subscribed","channel":"bench"}"#,
        false,
    );
    frames.extend(server_frame(true, 9, b"p1", false));
    frames.extend(server_frame(true, 1, &msg(1_000_000, 10), false));
    frames.extend(server_frame(true, 1, &msg(2_000_000, 200), false)); // 16-bit length
    frames.extend(server_frame(true, 1, &msg(3_000_000, 5), true)); // 64-bit length
    let m4 = msg(4_000_000, 30);
    frames.extend(server_frame(false, 1, &m4[..20], false));
    frames.extend(server_frame(true, 9, b"p2", false));
    frames.extend(server_frame(false, 0, &m4[20..40], false));
    frames.extend(server_frame(true, 0, &m4[40..], false));
    frames.extend(server_frame(true, 0xA, b"", false));
    let mut ok = true;
    let mut ok_out = true;
    for split in 1..frames.len() + 60 {
        let mut c = new_ws_conn();
        let accept = c.ws.as_ref().unwrap().accept.clone();
        let stream = [
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").into_bytes(),
            frames.clone(),
        ]
        .concat();
        let split = split.min(stream.len() - 1);
        let mut loc = Local::new(1, 1_500_000, 5_000_000);
        for piece in [&stream[..split], &stream[split..]] {
            for tiny in piece.chunks(if split % 3 == 0 { 1 } else { 4096 }) {
                ok &= c.feed(tiny, &mut loc).is_ok();
            }
        }
        ok &= c.got_retry
            && c.st == St::Body
            && loc.stale == 1
            && loc.events == 3
            && loc.hist.max == 3000
            && loc.hist.sum == 6000;
        let out = client_frames(&c.ws.as_ref().unwrap().out);
        ok_out &= out
            == Some(vec![
                (1, br#"{"type":"subscribe","channel":"bench"}"#.to_vec()),
                (0xA, b"p1".to_vec()),
                (0xA, b"p2".to_vec()),
            ]);
    }
    check("WebSocket parser, every split", ok);
    check("WebSocket subscribe + pongs masked", ok_out);
    let mut c = new_ws_conn();
    let mut loc = Local::new(1, 0, 0);
    check(
        "WebSocket bad accept rejected",
        c.feed(
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n",
            &mut loc,
        )
        .is_err(),
    );
    // a connection past its `101` (each with its own key)
    let open_ws = |loc: &mut Local| {
        let mut c = new_ws_conn();
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            c.ws.as_ref().unwrap().accept
        );
        let ok = c.feed(head.as_bytes(), loc).is_ok();
        (c, ok)
    };
    let (mut c, ok1) = open_ws(&mut loc);
    let close = c.feed(
        &server_frame(true, 8, b"\x03\xe9idle timeout", false),
        &mut loc,
    );
    let (mut c2, ok2) = open_ws(&mut loc);
    let (mut c3, ok3) = open_ws(&mut loc);
    let slow_close = c3.feed(&server_frame(true, 8, b"\x0f\xa8slow", false), &mut loc);
    check(
        "WebSocket close and masked frames rejected",
        ok1 && ok2
            && ok3
            && matches!(close, Err(e) if e.contains("1001 idle timeout"))
            && !c.ws.as_ref().unwrap().slow
            && slow_close.is_err()
            && c3.ws.as_ref().unwrap().slow
            && c2.feed(&[0x81, 0x81, 1, 2, 3, 4, 5], &mut loc).is_err()
            && new_ws_conn()
                .feed(b"HTTP/1.1 426 Upgrade Required\r\n\r\n", &mut loc)
                .is_err(),
    );

    // publish responses
    let r = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let first = parse_response(r, false);
    let ok1 = matches!(first, Some(Ok((n, 200, false))) if n == 50);
    let second = parse_response(&r[50..], false);
    let ok2 = matches!(second, Some(Ok((n, 201, false))) if n == r.len() - 50);
    check(
        "publish response framing",
        ok1 && ok2 && parse_response(&r[..49], false).is_none(),
    );
    check(
        "publish response close",
        matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                false
            ),
            Some(Ok((_, 200, true)))
        ),
    );

    let cfg = PubCfg {
        kind: Kind::Redix,
        addr: "127.0.0.1:1".parse().unwrap(),
        channel: "bench".into(),
        rate: 1.0,
        duration: Duration::from_secs(1),
        payload_bytes: 100,
        max_conns: 1,
        deadline: Instant::now(),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let req = publish_request(&cfg, 1_763_000_000_000_000_000);
    let text = String::from_utf8_lossy(&req).into_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    check(
        "redix publish body",
        v["channel"] == "bench"
            && v["data"]["t"] == 1_763_000_000_000_000_000u64
            && v["data"].to_string().len() == 100,
    );
    println!("{failures} failed");
    failures == 0
}
