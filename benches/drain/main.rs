//! The paced drain, measured: N clients (half SSE, half WebSocket) on one redix, SIGTERM,
//! and for every client the reconnect time it was told (when its final word came, plus
//! the `retry` in it: SSE `event: reconnect` with `retry:`, WebSocket close 1012 with
//! `{"retry":MS}`), as a histogram over the drain window; how many got their final word;
//! the exit status. See BENCHMARKS.md, "Paced drain".
//!
//! `cargo bench --bench drain -- [--clients 10000] [--drain-ms 10000] [--bin PATH]`
//!
//! One mio loop holds every client socket (non-blocking, from 127.0.0.2…); load only to
//! 127.0.0.1, bounded in count (at most 18,000 clients) and time (a minute).

#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use support::spawn::{default_redix_bin, listening_addr, spawn_tied};

const MAX_CLIENTS: usize = 18_000;
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// Clients per source address.
const PER_SOURCE: usize = 5_000;

struct Client {
    stream: TcpStream,
    ws: bool,
    buf: Vec<u8>,
    /// ms after SIGTERM when the final word came, and its retry hint.
    told: Option<(u64, u64)>,
    done: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("drain bench: {e}");
        std::process::exit(1);
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn run() -> Result<(), String> {
    let n: usize = arg("--clients")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
        .min(MAX_CLIENTS);
    let drain_ms: u64 = arg("--drain-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let bin = arg("--bin")
        .map(Into::into)
        .unwrap_or_else(default_redix_bin);
    let limit = format!("{}", n * 2);
    let drain = format!("shutdown.drain_ms={drain_ms}");
    let mut cmd = Command::new(&bin);
    cmd.args(["--listen", "127.0.0.1:0", "--workers", "2", "--set", &drain])
        .args(["--set", &format!("limits.sse_per_ip={limit}")])
        .args(["--set", &format!("limits.ws_per_ip={limit}")])
        .args(["--set", &format!("limits.http_per_ip={limit}")])
        .env("REDIX_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = spawn_tied(&mut cmd, &bin, "cargo build --release")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let addr = listening_addr(stdout)?
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "redix did not say where it listens")?;
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut clients = connect_all(&poll, addr, n)?;
    let ready = wait_ready(&mut poll, &mut clients)?;
    println!(
        "{ready} of {n} clients streaming ({} SSE, {} WebSocket)",
        n - n / 2,
        n / 2
    );
    let t0 = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    read_until_closed(&mut poll, &mut clients, t0)?;
    let status = child.wait().map_err(|e| e.to_string())?;
    report(&clients, drain_ms, status.code());
    Ok(())
}

fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (i / PER_SOURCE) as u8)
}

fn connect_all(poll: &Poll, addr: SocketAddr, n: usize) -> Result<Vec<Client>, String> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| e.to_string())?;
        sock.bind(&SocketAddrV4::new(source(i), 0).into())
            .map_err(|e| e.to_string())?;
        sock.connect(&addr.into())
            .map_err(|e| format!("connect {i}: {e}"))?;
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut stream = TcpStream::from_std(sock.into());
        let ws = i % 2 == 1;
        let req = match ws {
            true => support::ws::upgrade_request("/ws", "t", "dGhlIHNhbXBsZSBub25jZQ==", false),
            false => b"GET /api/stream?channels=d HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
        };
        stream
            .write_all(&req)
            .map_err(|e| format!("request {i}: {e}"))?;
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE)
            .map_err(|e| e.to_string())?;
        clients.push(Client {
            stream,
            ws,
            buf: Vec::new(),
            told: None,
            done: false,
        });
    }
    Ok(clients)
}

/// Reads until every client has its response head; returns how many do.
fn wait_ready(poll: &mut Poll, clients: &mut [Client]) -> Result<usize, String> {
    let end = Instant::now() + RUN_LIMIT;
    let head_done = |c: &Client| support::http::find(&c.buf, b"\r\n\r\n").is_some();
    while Instant::now() < end && !clients.iter().all(head_done) {
        pump(poll, clients, None)?;
    }
    Ok(clients.iter().filter(|c| head_done(c)).count())
}

fn read_until_closed(poll: &mut Poll, clients: &mut [Client], t0: Instant) -> Result<(), String> {
    let end = Instant::now() + RUN_LIMIT;
    while Instant::now() < end && !clients.iter().all(|c| c.done) {
        pump(poll, clients, Some(t0))?;
    }
    Ok(())
}

fn pump(poll: &mut Poll, clients: &mut [Client], t0: Option<Instant>) -> Result<(), String> {
    let mut events = Events::with_capacity(1024);
    poll.poll(&mut events, Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let mut chunk = [0u8; 16 * 1024];
    for ev in events.iter() {
        let Some(c) = clients.get_mut(ev.token().0) else {
            continue;
        };
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    c.done = true;
                    break;
                }
                Ok(k) => c.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    c.done = true;
                    break;
                }
            }
        }
        if let (Some(t0), None) = (t0, c.told) {
            c.told = final_word(c).map(|retry| (t0.elapsed().as_millis() as u64, retry));
        }
    }
    Ok(())
}

/// The retry hint in the client's final word, once it has arrived.
fn final_word(c: &Client) -> Option<u64> {
    let body_at = support::http::find(&c.buf, b"\r\n\r\n")? + 4;
    let body = &c.buf[body_at..];
    match c.ws {
        false => {
            let at = support::http::find(body, b"event: reconnect")?;
            let text = String::from_utf8_lossy(&body[..at]);
            text.rsplit("retry: ")
                .next()?
                .lines()
                .next()?
                .trim()
                .parse()
                .ok()
        }
        true => close_retry(body),
    }
}

/// Walks server frames to a close frame; its reason's `retry`.
fn close_retry(mut frames: &[u8]) -> Option<u64> {
    while frames.len() >= 2 {
        let op = frames[0] & 0x0f;
        let (len, head) = match frames[1] & 0x7f {
            126 => (
                u16::from_be_bytes([*frames.get(2)?, *frames.get(3)?]) as usize,
                4,
            ),
            127 => return None,
            l => (l as usize, 2),
        };
        let payload = frames.get(head..head + len)?;
        if op == 8 {
            let reason: serde_json::Value = serde_json::from_slice(payload.get(2..)?).ok()?;
            return reason["retry"].as_u64();
        }
        frames = &frames[head + len..];
    }
    None
}

fn report(clients: &[Client], drain_ms: u64, exit: Option<i32>) {
    let told: Vec<u64> = clients
        .iter()
        .filter_map(|c| c.told.map(|(at, r)| at + r))
        .collect();
    let closes: Vec<u64> = clients
        .iter()
        .filter_map(|c| c.told.map(|(at, _)| at))
        .collect();
    let missing = clients.len() - told.len();
    let mut by_second: HashMap<u64, usize> = HashMap::new();
    for t in &told {
        *by_second.entry(t / 1000).or_default() += 1;
    }
    let pct = |v: &[u64], q: f64| {
        let mut s = v.to_vec();
        s.sort_unstable();
        s.get(((s.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!("drain window {drain_ms} ms; exit status {exit:?}; {} of {} clients got their final word ({missing} without)", told.len(), clients.len());
    println!(
        "final words arrived {}..{} ms after SIGTERM (p50 {})",
        pct(&closes, 0.0),
        pct(&closes, 1.0),
        pct(&closes, 0.5)
    );
    println!(
        "reconnect times told: {}..{} ms (p1 {}, p50 {}, p99 {})",
        pct(&told, 0.0),
        pct(&told, 1.0),
        pct(&told, 0.01),
        pct(&told, 0.5),
        pct(&told, 0.99)
    );
    println!("clients told to come back, per second after SIGTERM:");
    let last = told.iter().max().copied().unwrap_or(0) / 1000;
    for s in 0..=last {
        let k = by_second.get(&s).copied().unwrap_or(0);
        println!(
            "  {s:>2}-{:<2} s {k:>6} {}",
            s + 1,
            "#".repeat(k * 60 / clients.len().max(1))
        );
    }
    let ms0 = told.iter().filter(|t| **t < 1).count();
    println!("most in one millisecond: {}", max_per_ms(&told).max(ms0));
}

fn max_per_ms(told: &[u64]) -> usize {
    let mut per: HashMap<u64, usize> = HashMap::new();
    for t in told {
        *per.entry(*t).or_default() += 1;
    }
    per.values().copied().max().unwrap_or(0)
}
