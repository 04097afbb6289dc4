//! The publisher: a keep-alive HTTP/1.1 client on its own thread with deadline-based
//! (open-loop) pacing.
//!
//! Event i is due at start + i/rate. It goes out on an idle keep-alive connection; when every
//! open connection still waits for its response, another is opened (up to --pub-conns), so a
//! server that answers publishes slowly still gets the requested rate offered. When all
//! --pub-conns are busy the event waits (reported as pacing lag); whatever is not sent within
//! the run's duration is reported as unsent.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::event::event_json;
use crate::hist::Histogram;
use crate::now_ns;
use crate::server::Kind;
use crate::support::http::{parse_response, post_json, publish_body};
use crate::support::spawn::interrupted;

/// Outstanding responses are waited for this long after the publishing window.
const RESPONSE_GRACE: Duration = Duration::from_secs(10);

pub struct PubCfg {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub channel: String,
    pub rate: f64,
    pub duration: Duration,
    pub payload_bytes: usize,
    pub max_conns: usize,
    pub deadline: Instant,
    pub stop: Arc<AtomicBool>,
}

pub struct PubOut {
    pub planned: u64,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub first_err: Option<String>,
    pub elapsed: Duration,
    pub max_lag: Duration,
    pub rtt: Histogram,
    pub connects: u64,
    pub max_in_flight: usize,
}

impl PubOut {
    fn note(&mut self, e: String) {
        self.errors += 1;
        if self.first_err.is_none() {
            self.first_err = Some(e);
        }
    }
}

/// The request for the event stamped `t`: redix `POST /api/publish` `{"channel":…,"data":{…}}`,
/// nchan `POST /pub?id=CH` with the object as body.
pub fn publish_request(c: &PubCfg, t: u64) -> Vec<u8> {
    let inner = event_json(t, c.payload_bytes);
    let host = c.addr.to_string();
    match c.kind {
        Kind::Redix | Kind::Redis | Kind::FinnhubSim => {
            post_json(&host, "/api/publish", &publish_body(&c.channel, &inner))
        }
        Kind::Nchan => post_json(&host, &format!("/pub?id={}", c.channel), &inner),
    }
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

/// Pushes pending bytes; reads and completes responses. Returns false if the conn must go.
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
    let keep = answers(pc, eof, out)?;
    if eof && pc.busy.is_some() {
        return Err("server closed the publish connection before answering".into());
    }
    Ok(keep && !eof)
}

/// Completes every response in `pc.inbuf`; false if the server will close.
fn answers(pc: &mut PubConn, eof: bool, out: &mut PubOut) -> Result<bool, String> {
    let mut keep = true;
    while !pc.inbuf.is_empty() {
        match parse_response(&pc.inbuf, eof) {
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(r)) => {
                pc.inbuf.drain(..r.len);
                if let Some(t0) = pc.busy.take() {
                    out.rtt.record(t0.elapsed().as_micros() as u64);
                    if (200..300).contains(&r.status) {
                        out.ok += 1;
                    } else {
                        out.note(format!("publish answered HTTP {}", r.status));
                    }
                }
                keep &= !r.close;
            }
        }
    }
    Ok(keep)
}

/// A new keep-alive connection registered as token `k`.
fn connect(addr: SocketAddr, poll: &Poll, k: usize) -> Result<PubConn, String> {
    let s = StdTcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("publish connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let _ = s.set_nonblocking(true);
    let mut sock = TcpStream::from_std(s);
    poll.registry()
        .register(&mut sock, Token(k), Interest::READABLE | Interest::WRITABLE)
        .map_err(|e| format!("register: {e}"))?;
    Ok(PubConn {
        sock,
        connected: true,
        out: Vec::new(),
        inbuf: Vec::new(),
        busy: None,
    })
}

/// The publisher thread's state between poll turns.
struct Publisher {
    c: PubCfg,
    out: PubOut,
    poll: Poll,
    conns: Vec<Option<PubConn>>,
    rbuf: Vec<u8>,
    start: Instant,
    /// the next event to send
    next: u64,
}

pub fn publisher(c: PubCfg) -> PubOut {
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
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            out.note(format!("epoll: {e}"));
            return out;
        }
    };
    let mut p = Publisher {
        conns: (0..c.max_conns.max(1)).map(|_| None).collect(),
        c,
        out,
        poll,
        rbuf: vec![0u8; 16 * 1024],
        start: Instant::now(),
        next: 0,
    };
    p.run();
    p.out.elapsed = p.c.duration;
    p.out
}

impl Publisher {
    fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_nanos((i as f64 * 1e9 / self.c.rate) as u64)
    }

    fn run(&mut self) {
        let end = self.start + self.c.duration;
        let mut events = Events::with_capacity(64);
        loop {
            let now = Instant::now();
            let stopping = self.c.stop.load(Relaxed) || interrupted() || now > self.c.deadline;
            if !stopping {
                self.send_due(now, end);
            }
            let in_flight = self
                .conns
                .iter()
                .filter(|x| matches!(x, Some(pc) if pc.busy.is_some()))
                .count();
            self.out.max_in_flight = self.out.max_in_flight.max(in_flight);
            let now = Instant::now();
            let sending_done = stopping || self.next >= self.out.planned || now >= end;
            if sending_done && (in_flight == 0 || now >= end + RESPONSE_GRACE || stopping) {
                if in_flight > 0 {
                    self.out.note(format!(
                        "{in_flight} publish request(s) unanswered at the end"
                    ));
                }
                return;
            }
            let mut timeout = Duration::from_millis(20);
            if !sending_done && in_flight < self.conns.len() {
                // A connection is free: sleep until the next event is due. (When every
                // connection is busy, only a response can free one: wait for it instead of
                // spinning.)
                timeout = timeout.min(self.due(self.next).saturating_duration_since(now));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.out.note(format!("poll: {e}"));
                    return;
                }
            }
            for ev in events.iter() {
                self.service(ev.token().0);
            }
        }
    }

    /// Sends every event that is due, while a connection is free.
    fn send_due(&mut self, now: Instant, end: Instant) {
        while self.next < self.out.planned && now < end {
            let due = self.due(self.next);
            if due > now {
                break;
            }
            let slot = self
                .conns
                .iter()
                .position(|x| matches!(x, Some(pc) if pc.busy.is_none()))
                .or_else(|| self.conns.iter().position(|x| x.is_none()));
            let Some(k) = slot else { break };
            if self.conns[k].is_none() {
                self.out.connects += 1;
                if self.out.connects > 20 * self.c.max_conns as u64 + 20 {
                    self.out
                        .note("too many publish connections failed; giving up".into());
                    self.next = self.out.planned;
                    break;
                }
                match connect(self.c.addr, &self.poll, k) {
                    Ok(pc) => self.conns[k] = Some(pc),
                    Err(e) if e.starts_with("register") => {
                        self.out.note(e);
                        break;
                    }
                    Err(e) => {
                        self.out.note(e);
                        self.next += 1;
                        continue;
                    }
                }
            }
            let pc = self.conns[k].as_mut().unwrap();
            self.out.max_lag = self.out.max_lag.max(now.saturating_duration_since(due));
            pc.out = publish_request(&self.c, now_ns());
            pc.busy = Some(Instant::now());
            self.out.sent += 1;
            self.next += 1;
            self.service(k);
        }
    }

    /// Services connection `k`, dropping it when it is done or failed.
    fn service(&mut self, k: usize) {
        let Some(pc) = self.conns[k].as_mut() else {
            return;
        };
        match service(pc, &mut self.rbuf, &mut self.out) {
            Ok(true) => {}
            Ok(false) => self.conns[k] = None,
            Err(e) => {
                self.out.note(e);
                self.conns[k] = None;
            }
        }
    }
}
