//! One subscriber connection of a generator thread: a non-blocking socket bound to its
//! source address, the request, then the stream (`event::SseStream` or `ws::Client`) fed
//! with whatever is read. `Conn::on_event` runs it as far as the socket allows.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use socket2::SockRef;

use crate::event::{on_ws_message_t, SseStream};
use crate::hist::Tally;
use crate::now_ns;
use crate::support::ws;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum St {
    Idle,
    Connecting,
    Sending(usize),
    /// request sent: reading the response head, then the stream
    Open,
}

/// What the connection reads after its request.
pub enum Stream {
    Sse(SseStream),
    Ws(Box<ws::Client>),
}

pub enum Outcome {
    Continue,
    /// (message, retryable)
    Fail(String, bool),
}

pub struct Conn {
    pub sock: Option<TcpStream>,
    pub st: St,
    pub src: Ipv4Addr,
    /// index of the node (server) it connects to
    pub node: usize,
    pub attempts: u32,
    pub started: Instant,
    pub stream: Stream,
    /// WebSocket: redix's `subscribed` ack arrived
    pub acked: bool,
    pub ready: bool,
    /// market trades: every `"t"` of an event is a delivery (see `SseStream::every_t`)
    pub every_t: bool,
}

impl Conn {
    pub fn new(src: Ipv4Addr) -> Conn {
        Conn {
            sock: None,
            st: St::Idle,
            src,
            node: 0,
            attempts: 0,
            started: Instant::now(),
            stream: Stream::Sse(SseStream::default()),
            acked: false,
            ready: false,
            every_t: false,
        }
    }

    /// The response head arrived and was accepted (`200`, or `101` for WebSocket).
    pub fn in_body(&self) -> bool {
        match &self.stream {
            Stream::Sse(s) => s.in_body(),
            Stream::Ws(w) => w.upgraded(),
        }
    }

    /// SSE: redix's first `retry:` line arrived; WebSocket: redix's `subscribed` ack arrived.
    pub fn got_retry(&self) -> bool {
        match &self.stream {
            Stream::Sse(s) => s.retry_seen,
            Stream::Ws(_) => self.acked,
        }
    }

    /// The server announced a slow-consumer close (SSE `event: slow`; WebSocket: close 4008).
    pub fn slow(&self) -> bool {
        match &self.stream {
            Stream::Sse(s) => s.slow,
            Stream::Ws(w) => w.slow,
        }
    }

    /// A new attempt: socket, bind, non-blocking connect, fresh stream state.
    pub fn start(
        &mut self,
        tok: usize,
        server: SocketAddr,
        reg: &Registry,
        ws: Option<&Arc<ws::Config>>,
    ) -> io::Result<()> {
        let mut ms = crate::support::net::connect_from(self.src, server)?;
        reg.register(&mut ms, Token(tok), Interest::READABLE | Interest::WRITABLE)?;
        self.sock = Some(ms);
        self.st = St::Connecting;
        self.started = Instant::now();
        self.acked = false;
        match (ws, &mut self.stream) {
            (Some(_), Stream::Ws(w)) => w.reset(),
            (Some(cfg), _) => {
                let seed = now_ns() ^ (tok as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut w = Box::new(ws::Client::new(cfg.clone(), seed));
                w.reset();
                self.stream = Stream::Ws(w);
            }
            (None, _) => {
                let mut s = SseStream::default();
                s.every_t = self.every_t;
                self.stream = Stream::Sse(s);
            }
        }
        Ok(())
    }

    pub fn close(&mut self, reg: &Registry, rst: bool) {
        if let Some(mut s) = self.sock.take() {
            let _ = reg.deregister(&mut s);
            if rst {
                let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
        }
        self.st = St::Idle;
    }

    /// Feeds bytes read from the server to the stream; deliveries go to `loc`.
    pub fn feed(&mut self, data: &[u8], loc: &mut Tally) -> Result<(), String> {
        match &mut self.stream {
            Stream::Sse(s) => s.feed(data, &mut |t| loc.delivery(t)),
            Stream::Ws(w) => {
                let (acked, every_t) = (&mut self.acked, self.every_t);
                w.feed(data, &mut |m| {
                    on_ws_message_t(m, every_t, &mut |t| loc.delivery(t), acked)
                })
            }
        }
    }

    /// `drain`: read until EOF/EAGAIN even after a short read (the event reported a hang-up or
    /// an error, which no later edge would report again).
    pub fn on_event(
        &mut self,
        req: &[u8],
        rbuf: &mut [u8],
        loc: &mut Tally,
        drain: bool,
    ) -> Outcome {
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
                    let req: &[u8] = match &self.stream {
                        Stream::Ws(w) => &w.req,
                        Stream::Sse(_) => req,
                    };
                    match sock.write(&req[off..]) {
                        Ok(n) if off + n == req.len() => self.st = St::Open,
                        Ok(n) => self.st = St::Sending(off + n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Outcome::Continue
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Outcome::Fail(format!("write request: {e}"), true),
                    }
                }
                St::Open => return self.read(rbuf, loc, drain),
            }
        }
    }

    /// Reads and feeds until the socket is drained (or a short read, unless `drain`).
    fn read(&mut self, rbuf: &mut [u8], loc: &mut Tally, drain: bool) -> Outcome {
        loop {
            if let Err(e) = self.flush_ws() {
                return Outcome::Fail(e, true);
            }
            let Some(sock) = self.sock.as_mut() else {
                return Outcome::Continue;
            };
            let n = match sock.read(rbuf) {
                Ok(0) => return Outcome::Fail("closed by server".into(), true),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Outcome::Continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Outcome::Fail(format!("read: {e}"), true),
            };
            loc.bytes += n as u64;
            loc.now_ns = now_ns();
            if let Err(e) = self.feed(&rbuf[..n], loc) {
                return Outcome::Fail(e, false);
            }
            if let Err(e) = self.flush_ws() {
                return Outcome::Fail(e, true);
            }
            if n < rbuf.len() && !drain {
                // Short read: the receive queue is empty and edge-triggered epoll reports the
                // next arrival (data or FIN) as a new event, so skip the read that would
                // return EAGAIN. A FIN that had already arrived shows in this event as
                // read-closed, and then `drain` is set.
                return Outcome::Continue;
            }
        }
    }

    /// Writes the WebSocket frames queued (subscribe, pongs) as far as the socket takes them.
    fn flush_ws(&mut self) -> Result<(), String> {
        let (Stream::Ws(w), Some(sock)) = (&mut self.stream, self.sock.as_mut()) else {
            return Ok(());
        };
        let mut off = 0;
        while off < w.out.len() {
            match sock.write(&w.out[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("WebSocket write: {e}")),
            }
        }
        w.out.drain(..off);
        Ok(())
    }
}
