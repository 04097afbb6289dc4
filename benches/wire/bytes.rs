//! Scenario 1, bytes on the wire per event: one client of each variant (SSE plain / gzip /
//! batch / gzip+batch, WebSocket plain / deflate / batch / deflate+batch) reads the same
//! trade stream; each decodes everything and counts bytes and reads after the response head.
//! Then, unless `--per-variant-secs 0`, each variant alone, for redix's write counters.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bytes_report::report_bytes;
use crate::client::{
    check_upgrade, client_frame, delta, metrics, open, publish_request, ws_key, ws_upgrade_request,
    KeepAlive,
};
use crate::decode::{Decoded, GzIn, SseIn, WsIn, WsMsg};
use crate::server::Server;
use crate::support::http::{header_value, status_of};
use crate::support::report::{header, round, thousands};
use crate::support::spawn::check_interrupted;
use crate::trades::Trades;
use crate::{Args, Res};

#[derive(Clone, Copy, Debug)]
pub struct Variant {
    pub name: &'static str,
    pub ws: bool,
    pub compress: bool,
    pub batch: bool,
}

pub const VARIANTS: [Variant; 8] = [
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
pub struct ClientOut {
    pub v: Variant,
    /// bytes read after the response head (the whole body)
    pub bytes: u64,
    /// of which before it was ready (SSE `retry:`, WebSocket subscribe ack)
    pub pre_bytes: u64,
    /// `read(2)` calls that returned data after it was ready
    pub reads: u64,
    pub extensions: String,
    pub dec: Decoded,
}

pub struct ClientCtl {
    pub ready: crossbeam_channel::Sender<Res<()>>,
    pub received: Arc<AtomicUsize>,
    pub stop: Arc<AtomicBool>,
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

/// The request a variant's client sends.
fn stream_request(v: Variant, channel: &str, key: &str) -> Vec<u8> {
    if v.ws {
        let path = if v.batch { "/ws?batch=1" } else { "/ws" };
        return ws_upgrade_request(path, key, v.compress);
    }
    format!(
        "GET /api/stream?channels={channel}{} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n{}\r\n",
        if v.batch { "&batch=1" } else { "" },
        if v.compress { "Accept-Encoding: gzip\r\n" } else { "" }
    )
    .into_bytes()
}

/// What a client decodes after the head.
enum Body {
    Sse(SseIn),
    Ws(WsIn),
}

/// Checks the response head; WebSocket: sends the subscribe message.
fn start_body(
    out: &mut ClientOut,
    s: &mut TcpStream,
    head: &str,
    key: &str,
    channel: &str,
) -> Res<Body> {
    let v = out.v;
    if v.ws {
        out.extensions = check_upgrade(head, key, v.compress)?;
        let sub = format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#);
        s.write_all(&client_frame(1, sub.as_bytes()))
            .map_err(|e| format!("subscribe: {e}"))?;
        return Ok(Body::Ws(WsIn::new(v.compress)));
    }
    if status_of(head) != 200 {
        return Err(format!("stream refused: {head:?}"));
    }
    let gz = header_value(head, "content-encoding") == Some("gzip");
    if gz != v.compress {
        return Err(format!(
            "Content-Encoding gzip is {gz}, wanted {}",
            v.compress
        ));
    }
    out.extensions = if gz { "gzip".into() } else { String::new() };
    Ok(Body::Sse(SseIn {
        gz: gz.then(GzIn::new),
        text: Vec::new(),
    }))
}

fn bytes_client_inner(
    out: &mut ClientOut,
    addr: SocketAddr,
    channel: &str,
    n: usize,
    ctl: &ClientCtl,
) -> Res<()> {
    let key = ws_key(n);
    let request = stream_request(out.v, channel, &key);
    let (mut s, head, rest) = open(addr, &request, Duration::from_millis(100))?;
    let mut body = start_body(out, &mut s, &head, &key, channel)?;
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
        on_chunk(&mut out.dec, &mut s, &mut body, chunk, channel)?;
        if out.dec.ready && !was_ready {
            out.pre_bytes = out.bytes;
            let _ = ctl.ready.try_send(Ok(()));
        }
        ctl.received.store(out.dec.ids.len(), Relaxed);
        pending.clear();
    }
}

/// Decodes one read; answers pings.
fn on_chunk(
    dec: &mut Decoded,
    s: &mut TcpStream,
    body: &mut Body,
    chunk: &[u8],
    channel: &str,
) -> Res<()> {
    match body {
        Body::Sse(sse) => sse.feed(chunk, dec, channel),
        Body::Ws(ws) => {
            for m in ws.feed(chunk)? {
                match m.opcode {
                    9 => {
                        let _ = s.write_all(&client_frame(10, &m.payload));
                    }
                    10 => {}
                    8 => return Err(format!("close frame {:?}", m.payload)),
                    1 => ws_message(&m, dec, channel)?,
                    op => return Err(format!("unexpected opcode {op}")),
                }
            }
            Ok(())
        }
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

/// One phase: what was published and what each client saw, with redix's counters
/// before and after.
pub struct BytesRun {
    pub label: String,
    pub published: Vec<u64>,
    pub data_bytes: u64,
    pub clients: Vec<ClientOut>,
    pub m0: HashMap<String, f64>,
    pub m1: HashMap<String, f64>,
    pub secs: f64,
}

type Clients = Vec<(JoinHandle<ClientOut>, Arc<AtomicUsize>)>;

/// Starts one client thread per variant, each subscribed to `a.channel`.
fn spawn_clients(
    addr: SocketAddr,
    a: &Args,
    variants: &[Variant],
    n: usize,
    stop: &Arc<AtomicBool>,
    rtx: &crossbeam_channel::Sender<Res<()>>,
) -> Res<Clients> {
    let mut handles: Clients = Vec::new();
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
    Ok(handles)
}

/// Stops the clients and collects what each saw.
fn finish(stop: &AtomicBool, handles: Clients) -> Vec<ClientOut> {
    stop.store(true, Relaxed);
    handles
        .into_iter()
        .filter_map(|(h, _)| h.join().ok())
        .collect()
}

/// Publishes `n` trades at `--rate` on one keep-alive connection; returns their ids, the
/// data bytes and the seconds it took.
fn publish_trades(addr: SocketAddr, a: &Args, n: usize, seed: u64) -> Res<(Vec<u64>, u64, f64)> {
    let mut p = KeepAlive::connect(addr)?;
    let mut trades = Trades::new(seed);
    let mut published = Vec::with_capacity(n);
    let mut data_bytes = 0u64;
    let t0 = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(a.rate.max(1)));
    for i in 0..n {
        if let Some(d) = (t0 + period * i as u32).checked_duration_since(Instant::now()) {
            thread::sleep(d);
        }
        let data = trades.next();
        data_bytes += data.len() as u64;
        check_interrupted()?;
        p.send(&publish_request(&a.channel, &data))?;
        published.push(p.publish_answer()?);
    }
    Ok((published, data_bytes, t0.elapsed().as_secs_f64()))
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
    let handles = spawn_clients(addr, a, variants, n, &stop, &rtx)?;
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
    let (published, data_bytes, secs) = match publish_trades(addr, a, n, seed) {
        Ok(p) => p,
        Err(e) => {
            finish(&stop, handles);
            return Err(e);
        }
    };
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

pub fn check_ids(c: &ClientOut, published: &[u64]) -> String {
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
        check_interrupted()?;
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

pub fn run_bytes(a: &Args, json_lines: &mut Vec<Value>) -> Res<bool> {
    let n = ((a.secs * f64::from(a.rate)).round() as usize).max(1);
    let window = format!("batch.window_ms={}", a.window_ms);
    let mut ok = true;
    for (label, extra) in [
        ("ws.deflate_min_bytes=default(256)", None),
        ("ws.deflate_min_bytes=0", Some("ws.deflate_min_bytes=0")),
    ] {
        check_interrupted()?;
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
