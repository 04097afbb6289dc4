//! The publishers: `--conns` keep-alive connections per node, one thread each, every one
//! keeping `--depth` `POST /api/publish` requests in flight (pipelined; redix answers a
//! connection's requests in order), closed loop, until told to stop. Connection *k* goes to
//! node *k* mod nodes and owns channels *k*, *k* + C, *k* + 2C, … (C connections in all),
//! which it publishes to in turn: a channel's publishes all go through one connection and one
//! node, in order, so the stream's newest entry must be the connection's last acknowledged
//! publish. Each event's data is `{"s":<the channel's sequence number>,"pad":"xx…"}`.
//!
//! Latency (request written → its answer read, so queueing behind the earlier requests of a
//! pipeline included) is recorded only while the window is open.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cli::Res;
use crate::support::http;

/// What the main thread and every publisher share.
#[derive(Default)]
pub struct Flags {
    pub stop: AtomicBool,
    /// the measured window is open: record latencies
    pub measuring: AtomicBool,
    /// 2xx answers so far, all connections
    pub acked: AtomicU64,
}

/// One channel as its connection saw it.
#[derive(Clone, Debug, Default)]
pub struct ChannelTally {
    pub name: String,
    /// publishes sent (the next sequence number)
    pub sent: u64,
    pub acked: u64,
    /// the last acknowledged publish: its sequence number and id
    pub last: Option<(u64, String)>,
    /// requests whose outcome is unknown (the connection failed under them)
    pub unanswered: u64,
}

/// What one connection did.
#[derive(Default)]
pub struct ConnOut {
    pub channels: Vec<ChannelTally>,
    /// non-2xx answers by status
    pub non_2xx: BTreeMap<u16, u64>,
    /// connection failures (each followed by a reconnect unless stopping)
    pub errors: u64,
    pub first_error: Option<String>,
    /// µs per publish answered in the window
    pub lat_us: Vec<u32>,
}

pub struct Spec {
    pub addr: SocketAddr,
    pub channels: Vec<String>,
    pub depth: usize,
    pub pad: String,
}

/// Starts one thread per spec.
pub fn start(specs: Vec<Spec>, flags: &Arc<Flags>) -> Res<Vec<JoinHandle<ConnOut>>> {
    specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            let flags = Arc::clone(flags);
            std::thread::Builder::new()
                .name(format!("publisher-{i}"))
                .spawn(move || run(spec, &flags))
                .map_err(|e| e.to_string())
        })
        .collect()
}

fn run(spec: Spec, flags: &Flags) -> ConnOut {
    let mut out = ConnOut {
        channels: spec
            .channels
            .iter()
            .map(|c| ChannelTally {
                name: c.clone(),
                ..ChannelTally::default()
            })
            .collect(),
        ..ConnOut::default()
    };
    let mut next = 0;
    while !flags.stop.load(Relaxed) {
        if let Err(e) = run_conn(&spec, flags, &mut out, &mut next) {
            out.errors += 1;
            out.first_error.get_or_insert(e);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    out
}

/// A request on its way: when it was written, its channel and sequence number.
type InFlight = VecDeque<(Instant, usize, u64)>;

/// One connection until stopped (Ok, everything answered) or failed (Err; the requests
/// still in flight are counted as unanswered).
fn run_conn(spec: &Spec, flags: &Flags, out: &mut ConnOut, next: &mut usize) -> Res<()> {
    let mut s = TcpStream::connect_timeout(&spec.addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {}: {e}", spec.addr))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut inflight = InFlight::new();
    let mut buf = Vec::with_capacity(16 * 1024);
    let r = pump(spec, flags, out, next, &mut s, &mut inflight, &mut buf);
    for (_, ch, _) in inflight {
        out.channels[ch].unanswered += 1;
    }
    r
}

fn pump(
    spec: &Spec,
    flags: &Flags,
    out: &mut ConnOut,
    next: &mut usize,
    s: &mut TcpStream,
    inflight: &mut InFlight,
    buf: &mut Vec<u8>,
) -> Res<()> {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let mut batch = Vec::new();
        while !flags.stop.load(Relaxed) && inflight.len() < spec.depth {
            let ch = *next % out.channels.len();
            *next += 1;
            let tally = &mut out.channels[ch];
            let data = format!("{{\"s\":{},\"pad\":\"{}\"}}", tally.sent, spec.pad);
            let body = http::publish_body(&tally.name, &data);
            batch.extend_from_slice(&http::post_json("bench", "/api/publish", &body));
            inflight.push_back((Instant::now(), ch, tally.sent));
            tally.sent += 1;
        }
        if !batch.is_empty() {
            s.write_all(&batch).map_err(|e| format!("write: {e}"))?;
        }
        if inflight.is_empty() {
            return Ok(());
        }
        let n = s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the node closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        answers(flags, out, inflight, buf)?;
    }
}

/// Takes every complete answer off the front of `buf`.
fn answers(
    flags: &Flags,
    out: &mut ConnOut,
    inflight: &mut InFlight,
    buf: &mut Vec<u8>,
) -> Res<()> {
    let mut used = 0;
    while let Some(r) = http::parse_response(&buf[used..], false) {
        let r = r?;
        let (sent_at, ch, seq) = inflight.pop_front().ok_or("an answer nobody asked for")?;
        let body = &buf[used + r.body..used + r.len];
        if (200..300).contains(&r.status) {
            let id = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_owned))
                .ok_or_else(|| format!("no id in {}", String::from_utf8_lossy(body)))?;
            let tally = &mut out.channels[ch];
            tally.acked += 1;
            tally.last = Some((seq, id));
            flags.acked.fetch_add(1, Relaxed);
            if flags.measuring.load(Relaxed) {
                out.lat_us
                    .push(sent_at.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
        } else {
            *out.non_2xx.entry(r.status).or_default() += 1;
            if out.first_error.is_none() {
                let text = String::from_utf8_lossy(body);
                out.first_error = Some(format!("status {}: {text}", r.status));
            }
        }
        used += r.len;
        if r.close {
            buf.drain(..used);
            return Err("the node closed the connection after an answer".into());
        }
    }
    buf.drain(..used);
    Ok(())
}

/// The `p`-th percentile (0–100) of sorted values.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
