//! The bench's clients: S real loopback subscribers of one wire variant,
//! set up with blocking sockets, then drained by one thread (mio, a fixed
//! buffer) until closed. Everything here runs as `Role::Bench`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};

#[path = "../support/mod.rs"]
mod support;

use crate::counting::{set_role, Role};
use support::ws;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Sse,
    SseGzip,
    Ws,
    WsDeflate,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::Sse,
        Variant::SseGzip,
        Variant::Ws,
        Variant::WsDeflate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Sse => "sse",
            Variant::SseGzip => "sse-gzip",
            Variant::Ws => "ws",
            Variant::WsDeflate => "ws-deflate",
        }
    }
}

/// Subscribers being drained by a thread of their own.
pub struct Drainer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Drainer {
    /// Opens `n` subscribers of `channel`, each ready (subscribed) on return.
    pub fn open(addr: SocketAddr, channel: &str, variant: Variant, n: usize) -> Drainer {
        let streams: Vec<TcpStream> = (0..n).map(|i| open(addr, channel, variant, i)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || drain(streams, &flag));
        Drainer { stop, thread }
    }

    pub fn close(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

fn open(addr: SocketAddr, channel: &str, variant: Variant, i: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect to redix");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    match variant {
        Variant::Sse | Variant::SseGzip => {
            let gzip = match variant {
                Variant::SseGzip => "Accept-Encoding: gzip\r\n",
                _ => "",
            };
            let req =
                format!("GET /api/stream?channels={channel} HTTP/1.1\r\nHost: bench\r\n{gzip}\r\n");
            s.write_all(req.as_bytes()).expect("send request");
            let head = read_head(&mut s);
            assert!(head.starts_with("HTTP/1.1 200"), "SSE refused: {head}");
        }
        Variant::Ws | Variant::WsDeflate => subscribe_ws(&mut s, channel, variant, i),
    }
    s
}

fn subscribe_ws(s: &mut TcpStream, channel: &str, variant: Variant, i: usize) {
    let deflate = variant == Variant::WsDeflate;
    let key = format!("YWxsb2NiZW5jaGtleS{:04}==", i % 10_000);
    s.write_all(&ws::upgrade_request("/ws", "bench", &key, deflate))
        .expect("send upgrade");
    let head = read_head(s);
    ws::check_upgrade(head.as_bytes(), &ws::accept_for(&key), deflate).expect("101");
    let cmd = format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#);
    let mut frame = Vec::new();
    ws::push_client_frame(&mut frame, 0x1, cmd.as_bytes(), [1, 2, 3, 4]);
    s.write_all(&frame).expect("send subscribe");
    // The acknowledgement is the first frame after the 101.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while ws::frame_header(&buf).is_none_or(|(h, len)| buf.len() < h + len as usize) {
        let n = s.read(&mut chunk).expect("read ack");
        assert!(n > 0, "closed before the subscribe ack");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads up to the blank line ending the response head (one byte at a
/// time: nothing after it is consumed).
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).expect("read head");
        assert!(n > 0, "closed during the head");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads every socket until told to stop; what arrives is thrown away.
fn drain(streams: Vec<TcpStream>, stop: &AtomicBool) {
    set_role(Role::Bench);
    let mut poll = Poll::new().expect("poll");
    let mut conns: Vec<mio::net::TcpStream> = streams
        .into_iter()
        .map(|s| {
            s.set_nonblocking(true).expect("nonblocking");
            mio::net::TcpStream::from_std(s)
        })
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry()
            .register(c, Token(i), Interest::READABLE)
            .expect("register");
    }
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let _ = poll.poll(&mut events, Some(Duration::from_millis(10)));
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
        }
    }
}
