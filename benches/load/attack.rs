//! `--attacker pipeline`: the acceptance measurement of the pipelining hardening. For the
//! publishing window of a fanout run, `--attacker-conns` connections from 127.0.0.250 write
//! pipelined `GET --attacker-path HTTP/1.1` requests as fast as the socket takes them and never
//! read an answer; when the server closes one (a write fails) it is counted and reopened after
//! 100 ms. Beside them a probe asks `GET /readyz` on a fresh connection (from 127.0.0.251) once
//! a second, 2 s allowed, and a sampler reads the server's VmRSS every 100 ms (the series keeps
//! every 500 ms) and stops the attack when it passes `--attacker-rss-cap-mib`, so an unfixed
//! server cannot take the box down.
//!
//! Every thread here is its own (one per attacker connection, the probe, the sampler), outside
//! the generator's event loops, so the subscribers' accounting is untouched; each ends at the
//! end of the window. Figures and formatting are in `attack_figs`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::attack_figs::ProbeOutcome;
use crate::attack_figs::{pipeline_buf, request, requests_completed, AttackFigs, Probe};
use crate::cli::{Args, Pass};
use crate::support::http::parse_response;
use crate::support::proc::rss_kib;
use crate::Res;

/// The attackers' source address (the generator's start at 127.0.0.2).
pub const ATTACK_SRC: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 250);
/// The `/readyz` probe's source address.
pub const PROBE_SRC: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 251);
/// Pause before reopening a connection the server closed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// A blocked write gives up after this, so the window's end is noticed.
const WRITE_TIMEOUT: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const SERIES_EVERY: Duration = Duration::from_millis(500);
/// Bytes per write: the request repeated to at least this.
const WRITE_CHUNK: usize = 64 * 1024;
/// At most this many attacker connections (threads).
pub const MAX_CONNS: usize = 64;

/// The attackers' running totals.
#[derive(Default)]
struct Counters {
    bytes: AtomicU64,
    requests: AtomicU64,
    reconnects: AtomicU64,
    connect_errors: AtomicU64,
    blocked_us: AtomicU64,
    last_close: Mutex<Option<String>>,
}

impl Counters {
    fn note_close(&self, why: String) {
        if let Ok(mut l) = self.last_close.lock() {
            *l = Some(why);
        }
    }
}

/// What the sampler saw of the server's VmRSS.
#[derive(Default)]
struct RssTrace {
    peak: u64,
    end: u64,
    series: Vec<u64>,
    guard: Option<(f64, u64)>,
}

/// A running attack (or, for the first pass of `compare`, only its sampler and probe).
pub struct Attack {
    figs: AttackFigs,
    t0: Instant,
    /// the attackers stop (the guard, or the end)
    stop_attack: Arc<AtomicBool>,
    /// everything stops (an early return of the scenario)
    stop_all: Arc<AtomicBool>,
    counters: Arc<Counters>,
    /// each returns when it stopped
    attackers: Vec<JoinHandle<Instant>>,
    probe: Option<JoinHandle<(Vec<Probe>, Option<String>)>>,
    sampler: Option<JoinHandle<RssTrace>>,
}

/// Refuses flags the attacker cannot honour.
pub fn check_args(a: &Args) -> Res<()> {
    if !(1..=MAX_CONNS).contains(&a.attacker_conns) {
        return Err(format!("--attacker-conns must be 1..={MAX_CONNS}"));
    }
    let p = &a.attacker_path;
    if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "--attacker-path {p:?} must start with / and hold no spaces or control characters"
        ));
    }
    Ok(())
}

impl Attack {
    /// Starts the pass's threads against the server at `addr` (process `pid`) for `window`;
    /// None when the pass has no attacker and nothing to sample.
    pub fn start(
        pass: Pass,
        addr: SocketAddr,
        pid: i32,
        a: &Args,
        window: Duration,
    ) -> Res<Option<Attack>> {
        if !matches!(pass, Pass::Baseline | Pass::Pipeline) {
            return Ok(None);
        }
        if !matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback()) {
            return Err(format!("the attacker only targets 127.0.0.0/8, not {addr}"));
        }
        let attacking = pass == Pass::Pipeline;
        let figs = AttackFigs {
            attacking,
            conns: if attacking { a.attacker_conns } else { 0 },
            src: ATTACK_SRC.to_string(),
            path: a.attacker_path.clone(),
            rss_before_kib: rss_kib(pid)?,
            rss_cap_kib: a.attacker_rss_cap_mib * 1024,
            ..AttackFigs::default()
        };
        let t0 = Instant::now();
        let until = t0 + window;
        let mut at = Attack {
            figs,
            t0,
            stop_attack: Arc::new(AtomicBool::new(false)),
            stop_all: Arc::new(AtomicBool::new(false)),
            counters: Arc::new(Counters::default()),
            attackers: vec![],
            probe: None,
            sampler: None,
        };
        at.spawn_monitors(addr, pid, until)?;
        if attacking {
            at.spawn_attackers(addr, a, until)?;
        }
        Ok(Some(at))
    }

    fn spawn_monitors(&mut self, addr: SocketAddr, pid: i32, until: Instant) -> Res<()> {
        let (t0, cap) = (self.t0, self.figs.rss_cap_kib);
        let (stop_attack, stop_all) = (self.stop_attack.clone(), self.stop_all.clone());
        self.sampler = Some(
            thread::Builder::new()
                .name("attack-rss".into())
                .spawn(move || sampler(pid, t0, until, cap, &stop_attack, &stop_all))
                .map_err(|e| e.to_string())?,
        );
        let stop_all = self.stop_all.clone();
        self.probe = Some(
            thread::Builder::new()
                .name("attack-probe".into())
                .spawn(move || prober(addr, t0, until, &stop_all))
                .map_err(|e| e.to_string())?,
        );
        Ok(())
    }

    fn spawn_attackers(&mut self, addr: SocketAddr, a: &Args, until: Instant) -> Res<()> {
        let req = request(&a.attacker_path);
        let buf = Arc::new(pipeline_buf(&req, WRITE_CHUNK));
        for i in 0..a.attacker_conns {
            let (buf, c, stop) = (buf.clone(), self.counters.clone(), self.stop_attack.clone());
            let req_len = req.len() as u64;
            let h = thread::Builder::new()
                .name(format!("attacker-{i}"))
                .spawn(move || attacker(addr, &buf, req_len, until, &stop, &c))
                .map_err(|e| e.to_string())?;
            self.attackers.push(h);
        }
        Ok(())
    }

    /// Waits for the threads (each ends at the window's end) and returns the figures.
    pub fn finish(mut self) -> AttackFigs {
        let attack_end = (self.attackers.drain(..))
            .filter_map(|h| h.join().ok())
            .max()
            .map_or(0.0, |end| end.duration_since(self.t0).as_secs_f64());
        let trace = self
            .sampler
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let (probes, probe_err) = self
            .probe
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let c = &self.counters;
        let mut f = std::mem::take(&mut self.figs);
        f.attack_s = attack_end;
        f.bytes_sent = c.bytes.load(Relaxed);
        f.requests_sent = c.requests.load(Relaxed);
        f.reconnects = c.reconnects.load(Relaxed);
        f.connect_errors = c.connect_errors.load(Relaxed);
        f.write_blocked_s = c.blocked_us.load(Relaxed) as f64 / 1e6;
        f.last_close = c.last_close.lock().ok().and_then(|l| l.clone());
        f.rss_peak_kib = trace.peak.max(f.rss_before_kib);
        f.rss_end_kib = trace.end;
        f.rss_series_kib = trace.series;
        f.guard = trace.guard;
        f.probes = probes;
        f.probe_first_err = probe_err;
        f
    }
}

impl Drop for Attack {
    /// An early return of the scenario stops every thread (they are bounded by the window
    /// anyway).
    fn drop(&mut self) {
        self.stop_attack.store(true, Relaxed);
        self.stop_all.store(true, Relaxed);
    }
}

/// A blocking TCP connection from `src` to `addr`.
fn connect_from(src: Ipv4Addr, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&SockAddr::from(SocketAddrV4::new(src, 0)))?;
    s.connect_timeout(&SockAddr::from(addr), timeout)?;
    Ok(s.into())
}

/// One attacker connection, reopened whenever the server closes it, until `until` or `stop`;
/// returns when it stopped.
fn attacker(
    addr: SocketAddr,
    buf: &[u8],
    req_len: u64,
    until: Instant,
    stop: &AtomicBool,
    c: &Counters,
) -> Instant {
    let live = || !stop.load(Relaxed) && Instant::now() < until;
    while live() {
        let closed = match connect_from(ATTACK_SRC, addr, CONNECT_TIMEOUT) {
            Ok(mut s) => {
                let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
                match pump(&mut s, buf, req_len, &live, c) {
                    Some(why) => {
                        c.reconnects.fetch_add(1, Relaxed);
                        Some(why)
                    }
                    None => None,
                }
            }
            Err(e) => {
                c.connect_errors.fetch_add(1, Relaxed);
                Some(format!("connect: {e}"))
            }
        };
        if let Some(why) = closed {
            c.note_close(why);
            if live() {
                thread::sleep(RECONNECT_PAUSE);
            }
        }
    }
    Instant::now()
}

/// Writes the pipeline round and round, never reading, while `live`; returns why the
/// connection ended (None: the window did).
fn pump(
    s: &mut TcpStream,
    buf: &[u8],
    req_len: u64,
    live: &dyn Fn() -> bool,
    c: &Counters,
) -> Option<String> {
    let (mut off, mut sent) = (0usize, 0u64);
    while live() {
        let t = Instant::now();
        match s.write(&buf[off..]) {
            Ok(0) => return Some("write returned 0".into()),
            Ok(n) => {
                c.bytes.fetch_add(n as u64, Relaxed);
                let done = requests_completed(sent, n as u64, req_len);
                c.requests.fetch_add(done, Relaxed);
                sent += n as u64;
                off = (off + n) % buf.len();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                c.blocked_us
                    .fetch_add(t.elapsed().as_micros() as u64, Relaxed);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Some(e.to_string()),
        }
    }
    None
}

/// Samples the server's VmRSS until `until`; stops the attack when it passes `cap_kib`.
fn sampler(
    pid: i32,
    t0: Instant,
    until: Instant,
    cap_kib: u64,
    stop_attack: &AtomicBool,
    stop_all: &AtomicBool,
) -> RssTrace {
    let mut tr = RssTrace::default();
    let mut next_series = t0;
    loop {
        let now = Instant::now();
        let Ok(kib) = rss_kib(pid) else {
            break; // the server is gone; the scenario notices and says so
        };
        tr.peak = tr.peak.max(kib);
        tr.end = kib;
        if now >= next_series {
            tr.series.push(kib);
            next_series += SERIES_EVERY;
        }
        if kib > cap_kib && tr.guard.is_none() {
            let at = t0.elapsed().as_secs_f64();
            tr.guard = Some((at, kib));
            stop_attack.store(true, Relaxed);
            eprintln!(
                "[attack] server RSS {kib} KiB passed the {cap_kib} KiB cap at {at:.1} s: attack stopped"
            );
        }
        if now >= until || stop_all.load(Relaxed) {
            break;
        }
        thread::sleep(SAMPLE_EVERY.min(until.saturating_duration_since(now)));
    }
    tr
}

/// `GET /readyz` once a second until `until`, each on its own short-lived thread so a slow
/// answer (up to the 2 s limit) does not delay the next; the probes and the first error.
fn prober(
    addr: SocketAddr,
    t0: Instant,
    until: Instant,
    stop: &AtomicBool,
) -> (Vec<Probe>, Option<String>) {
    let mut running = Vec::new();
    for k in 0u32.. {
        let at = t0 + PROBE_EVERY * k;
        if at >= until || stop.load(Relaxed) {
            break;
        }
        thread::sleep(at.saturating_duration_since(Instant::now()));
        let at_ms = at.duration_since(t0).as_millis() as u64;
        match thread::Builder::new()
            .name("readyz-probe".into())
            .spawn(move || probe_once(addr, at_ms))
        {
            Ok(h) => running.push(h),
            Err(e) => eprintln!("[attack] cannot start a /readyz probe: {e}"),
        }
    }
    let (mut out, mut first_err) = (Vec::new(), None);
    for (p, err) in running.into_iter().filter_map(|h| h.join().ok()) {
        out.push(p);
        first_err = first_err.or(err);
    }
    (out, first_err)
}

/// One `/readyz` on a fresh connection, within `PROBE_TIMEOUT`; the error, if any.
fn probe_once(addr: SocketAddr, at_ms: u64) -> (Probe, Option<String>) {
    let t = Instant::now();
    let r = readyz_status(addr, t + PROBE_TIMEOUT);
    let lat_us = t.elapsed().as_micros() as u64;
    let (outcome, err) = match r {
        Ok(st) => (ProbeOutcome::Status(st), None),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            (ProbeOutcome::Timeout, None)
        }
        Err(e) => (ProbeOutcome::Error, Some(e.to_string())),
    };
    let p = Probe {
        at_ms,
        outcome,
        lat_us,
    };
    (p, err)
}

fn readyz_status(addr: SocketAddr, deadline: Instant) -> io::Result<u16> {
    let left = || {
        let d = deadline.saturating_duration_since(Instant::now());
        if d.is_zero() {
            Err(io::Error::from(ErrorKind::TimedOut))
        } else {
            Ok(d)
        }
    };
    let mut s = connect_from(PROBE_SRC, addr, left()?)?;
    s.set_write_timeout(Some(left()?))?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
    loop {
        s.set_read_timeout(Some(left()?))?;
        let n = s.read(&mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
        match parse_response(&buf, n == 0) {
            Some(Ok(r)) => return Ok(r.status),
            Some(Err(e)) => return Err(io::Error::other(e)),
            None if n == 0 => return Err(io::Error::other("closed before an answer")),
            None => {}
        }
    }
}
