//! One replay of the resume scenario: K clients (SSE `lastEventId=0`, or WebSocket
//! `"since":"0"`) connect at once behind a barrier and read until each has all H events;
//! server CPU, VmRSS and `redix_replayed_total` around it.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{
    check_upgrade, client_frame, delta, metrics, open, ws_key, ws_upgrade_request,
};
use crate::decode::WsIn;
use crate::server::Server;
use crate::support::http::status_of;
use crate::support::proc::{cpu_secs, rss_kib, self_cpu_secs, status_kib};
use crate::support::spawn::interrupted;
use crate::{Args, Res};

pub const REPLAY_CHANNEL: &str = "replay:bench";

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

impl ReplayOut {
    /// One event's id (None: unreadable, counted as an order error).
    fn on_id(&mut self, id: Option<u64>) {
        match id {
            Some(id) => {
                if self.first_id == 0 {
                    self.first_id = id;
                }
                if id <= self.last_id {
                    self.order_errors += 1;
                }
                self.last_id = id;
                self.events += 1;
            }
            None => self.order_errors += 1,
        }
    }
}

/// Connects, checks the head, subscribes (WebSocket); returns the socket and the body bytes
/// that came with the head.
fn open_replay(ctl: &ReplayCtl) -> Res<(TcpStream, Vec<u8>)> {
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
        s.write_all(&client_frame(1, sub.as_bytes()))
            .map_err(|e| format!("subscribe: {e}"))?;
    } else if status_of(&head) != 200 {
        return Err(format!("stream refused: {head:?}"));
    }
    Ok((s, rest))
}

/// How a replay client takes its bytes apart.
enum Parse {
    /// Frame by frame; an event's id is read straight after the fixed prefix.
    Ws { ws: WsIn, prefix: Vec<u8> },
    /// Line by line: `id:` lines (checking they increase) and `event: reset`.
    Sse { partial: Vec<u8> },
}

fn replay_inner(ctl: &ReplayCtl, out: &mut ReplayOut, t0: Instant) -> Res<()> {
    let (mut s, mut pending) = open_replay(ctl)?;
    let mut parse = if ctl.ws {
        Parse::Ws {
            ws: WsIn::new(false),
            prefix: format!(r#"{{"type":"message","channel":"{REPLAY_CHANNEL}","id":""#)
                .into_bytes(),
        }
    } else {
        Parse::Sse {
            partial: Vec::new(),
        }
    };
    let mut buf = vec![0u8; 1 << 18];
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
        match &mut parse {
            Parse::Ws { ws, prefix } => ws_chunk(out, &mut s, ws, prefix, chunk)?,
            Parse::Sse { partial } => sse_chunk(out, partial, chunk),
        }
        pending.clear();
        if out.done.is_none() && out.events >= ctl.h {
            out.done = Some(t0.elapsed());
            ctl.done.fetch_add(1, Relaxed);
        }
    }
}

fn ws_chunk(
    out: &mut ReplayOut,
    s: &mut TcpStream,
    ws: &mut WsIn,
    prefix: &[u8],
    chunk: &[u8],
) -> Res<()> {
    for m in ws.feed(chunk)? {
        match m.opcode {
            1 if m.payload.starts_with(prefix) => {
                let rest = &m.payload[prefix.len()..];
                let end = rest.iter().position(|&b| b == b'"').unwrap_or(0);
                out.on_id(parse_u64(&rest[..end]));
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
                let _ = s.write_all(&client_frame(10, &m.payload));
            }
            8 => return Err(format!("close frame {:?}", m.payload)),
            _ => {}
        }
    }
    Ok(())
}

fn sse_chunk(out: &mut ReplayOut, partial: &mut Vec<u8>, chunk: &[u8]) {
    let mut line_start = 0;
    for (i, &b) in chunk.iter().enumerate() {
        if b != b'\n' {
            continue;
        }
        let line: &[u8] = if partial.is_empty() {
            &chunk[line_start..i]
        } else {
            partial.extend_from_slice(&chunk[line_start..i]);
            partial
        };
        if let Some(id) = line.strip_prefix(b"id: ") {
            out.on_id(parse_u64(id));
        } else if line == b"event: reset" {
            out.resets += 1;
        }
        partial.clear();
        line_start = i + 1;
    }
    partial.extend_from_slice(&chunk[line_start..]);
}

#[derive(Default)]
pub struct ReplayResult {
    pub transport: &'static str,
    pub k: usize,
    pub h: u64,
    pub secs: f64,
    pub server_cpu: f64,
    pub server_sys: f64,
    pub bench_cpu: f64,
    pub write_calls: f64,
    pub rss_before: u64,
    pub rss_after: u64,
    pub rss_closed: u64,
    pub hwm: u64,
    pub replayed: f64,
    pub complete: usize,
    pub bytes: u64,
    pub reads: u64,
    pub resets: u64,
    pub order_errors: u64,
    pub first_byte_ms: (f64, f64),
    pub errors: Vec<String>,
}

/// The clients of one replay, waiting at a barrier the phase opens.
struct Replayers {
    handles: Vec<JoinHandle<ReplayOut>>,
    barrier: Arc<Barrier>,
    done: Arc<AtomicUsize>,
    release: Arc<AtomicBool>,
    deadline: Instant,
}

fn spawn_replayers(srv: &Server, a: &Args, ws: bool) -> Res<Replayers> {
    let k = a.clients;
    let mut r = Replayers {
        handles: Vec::with_capacity(k),
        barrier: Arc::new(Barrier::new(k + 1)),
        done: Arc::new(AtomicUsize::new(0)),
        release: Arc::new(AtomicBool::new(false)),
        deadline: Instant::now() + Duration::from_secs(a.replay_timeout_secs),
    };
    for idx in 0..k {
        let ctl = ReplayCtl {
            ws,
            addr: srv.addr,
            h: a.events,
            barrier: r.barrier.clone(),
            deadline: r.deadline,
            done: r.done.clone(),
            release: r.release.clone(),
            idx,
        };
        match thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || replay_client(ctl))
        {
            Ok(hd) => r.handles.push(hd),
            Err(e) => {
                // The barrier would never open: let nobody wait on it.
                return Err(format!(
                    "spawning client {idx}: {e} (the bench cannot go on)"
                ));
            }
        }
    }
    Ok(r)
}

/// Waits (10 s) until redix has noticed every close of this transport, then a little more.
fn wait_closed(srv: &Server, ws: bool) -> Res<()> {
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
    Ok(())
}

pub fn replay_phase(srv: &mut Server, a: &Args, ws: bool, last_id: u64) -> Res<ReplayResult> {
    let k = a.clients;
    let rss_before = rss_kib(srv.pid)?;
    let m0 = metrics(srv.addr)?;
    let r = spawn_replayers(srv, a, ws)?;
    let cpu0 = cpu_secs(srv.pid)?;
    let bench0 = self_cpu_secs();
    r.barrier.wait();
    let t0 = Instant::now();
    while r.done.load(Relaxed) < k && Instant::now() < r.deadline + Duration::from_secs(1) {
        thread::sleep(Duration::from_millis(2));
        if interrupted() {
            break;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_secs(srv.pid)?;
    let bench1 = self_cpu_secs();
    let rss_after = rss_kib(srv.pid)?;
    let hwm = status_kib(srv.pid, "VmHWM:")?;
    let m1 = metrics(srv.addr)?;
    r.release.store(true, Relaxed);
    let outs: Vec<ReplayOut> = r
        .handles
        .into_iter()
        .filter_map(|h| h.join().ok())
        .collect();
    // Let redix notice the closes, then see what memory it kept.
    wait_closed(srv, ws)?;
    let rss_closed = rss_kib(srv.pid)?;
    srv.check_alive()?;
    let mut res = summarize(&outs, a, last_id, wall);
    res.transport = if ws { "ws" } else { "sse" };
    res.server_cpu = (cpu1.0 + cpu1.1) - (cpu0.0 + cpu0.1);
    res.server_sys = cpu1.1 - cpu0.1;
    res.bench_cpu = bench1 - bench0;
    res.write_calls = delta(&m0, &m1, "redix_write_calls_total");
    res.replayed = delta(&m0, &m1, "redix_replayed_total");
    (res.rss_before, res.rss_after, res.rss_closed, res.hwm) =
        (rss_before, rss_after, rss_closed, hwm);
    Ok(res)
}

/// What the clients saw, summed; the server figures are filled in by the caller.
fn summarize(outs: &[ReplayOut], a: &Args, last_id: u64, wall: f64) -> ReplayResult {
    let (k, h) = (a.clients, a.events);
    let complete = outs
        .iter()
        .filter(|o| {
            o.done.is_some() && o.events == h && o.last_id == last_id && o.order_errors == 0
        })
        .count();
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
    ReplayResult {
        k,
        h,
        secs,
        complete,
        bytes: outs.iter().map(|o| o.bytes).sum(),
        reads: outs.iter().map(|o| o.reads).sum(),
        resets: outs.iter().map(|o| o.resets).sum(),
        order_errors: outs.iter().map(|o| o.order_errors).sum(),
        first_byte_ms: (
            fb.first().copied().unwrap_or(0.0),
            fb.last().copied().unwrap_or(0.0),
        ),
        errors,
        ..ReplayResult::default()
    }
}
