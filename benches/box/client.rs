//! One subscriber of a generator process, without the event loop: its socket, the bytes it
//! has not parsed yet, and what it checks in every event (`"s"`, the publisher's sequence
//! number, for loss and duplicates; `"t"`, ns since the epoch, for latency). SSE streams
//! are read line by line; WebSockets through `support::ws::Client` (the handshake, the
//! subscribe message, pongs).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

use crate::hist::Hist;
use crate::support::{http, ws};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    /// connect() issued, request not written yet
    Connecting,
    /// request written, waiting for the head (SSE: and the `retry:` line; WS: the ack)
    Waiting,
    Ready,
    /// never read (a stalled subscriber)
    Stalled,
    Closed,
}

/// What every client of one process counts; summed over the clients, reset per pass.
#[derive(Default)]
pub struct Counts {
    pub received: u64,
    pub gaps: u64,
    pub dups: u64,
    /// ns since the epoch of the latest delivery
    pub last_ns: u64,
    pub hist: Hist,
}

pub struct Client {
    pub stream: TcpStream,
    pub state: State,
    /// µs since the process's start when connect() was called
    pub started_us: u64,
    ws: Option<Box<ws::Client>>,
    /// SSE: the head until it is complete, then the start of an unfinished line
    buf: Vec<u8>,
    head_done: bool,
    /// next sequence number this client expects
    pub expect: u64,
    /// events received in this pass
    pub got: u32,
    /// a stalled subscriber: its request is sent, then it is never read
    pub stall: bool,
    /// a churning subscriber (`--churn-pct`): closed and reopened every second, not counted
    pub churn: bool,
}

/// The source address for connection `i` of a run: `per_source` connections per address,
/// 127.0.0.2 … 127.0.0.251, then 127.0.1.2 …, so no address runs out of ephemeral ports.
pub fn source(i: usize, per_source: usize) -> Ipv4Addr {
    let s = i / per_source.max(1);
    Ipv4Addr::new(127, 0, (s / 250) as u8, 2 + (s % 250) as u8)
}

/// A non-blocking socket bound to `src`, connecting to `to` (in progress).
pub fn open(src: Ipv4Addr, to: SocketAddr, rcvbuf: usize) -> std::io::Result<TcpStream> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    // RST on close: no TIME_WAIT left on the source address between runs.
    sock.set_linger(Some(std::time::Duration::ZERO))?;
    if rcvbuf > 0 {
        sock.set_recv_buffer_size(rcvbuf)?;
    }
    // The port is picked at connect() (unique per 4-tuple), not at bind() (unique per
    // address, and slow to find among hundreds of thousands of bound sockets).
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a c_int option value.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.bind(&SocketAddrV4::new(src, 0).into())?;
    sock.set_nonblocking(true)?;
    match sock.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(sock.into()))
}

impl Client {
    pub fn new(stream: TcpStream, started_us: u64, ws_cfg: Option<&Arc<ws::Config>>) -> Client {
        let ws = ws_cfg.map(|c| {
            let mut w = Box::new(ws::Client::new(c.clone(), started_us ^ 0x9e37_79b9));
            w.reset();
            w
        });
        Client {
            stream,
            state: State::Connecting,
            started_us,
            ws,
            buf: Vec::new(),
            head_done: false,
            expect: 0,
            got: 0,
            stall: false,
            churn: false,
        }
    }

    /// Writes the request once the connect completed; false when it failed.
    pub fn send_request(&mut self, channel: &str) -> bool {
        if self.stream.peer_addr().is_err() {
            return false;
        }
        let req = match &self.ws {
            Some(w) => w.req.clone(),
            None => format!("GET /api/stream?channels={channel} HTTP/1.1\r\nHost: box\r\n\r\n")
                .into_bytes(),
        };
        // A request of ~100 bytes always fits an empty send buffer.
        self.stream.write_all(&req).is_ok()
    }

    /// Reads until `WouldBlock`; returns false when the stream ended or failed.
    pub fn read(&mut self, chunk: &mut [u8], now_ns: u64, c: &mut Counts) -> bool {
        loop {
            match self.stream.read(chunk) {
                Ok(0) => return false,
                Ok(k) => {
                    if !self.feed(&chunk[..k], now_ns, c) {
                        return false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    fn feed(&mut self, data: &[u8], now_ns: u64, c: &mut Counts) -> bool {
        if let Some(w) = self.ws.as_mut() {
            let (state, expect, got) = (&mut self.state, &mut self.expect, &mut self.got);
            let ok = w
                .feed(data, &mut |m: &[u8]| {
                    if http::find(m, b"\"type\":\"subscribed\"").is_some() {
                        *state = State::Ready;
                    } else {
                        on_event(m, now_ns, expect, got, c);
                    }
                    Ok(())
                })
                .is_ok();
            if !w.out.is_empty() {
                let out = std::mem::take(&mut w.out);
                // Subscribe and pongs are small; a full send buffer would be a broken peer.
                if self.stream.write_all(&out).is_err() {
                    return false;
                }
            }
            return ok;
        }
        self.buf.extend_from_slice(data);
        if !self.head_done {
            let Some(end) = http::find(&self.buf, b"\r\n\r\n") else {
                return self.buf.len() < 16 * 1024;
            };
            if http::status_of(&String::from_utf8_lossy(&self.buf[..end])) != 200 {
                return false;
            }
            self.head_done = true;
            self.buf.drain(..end + 4);
        }
        let mut at = 0;
        while let Some(nl) = self.buf[at..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[at..at + nl];
            if line.starts_with(b"retry:") {
                self.state = State::Ready;
            } else if let Some(d) = line.strip_prefix(b"data:") {
                on_event(d, now_ns, &mut self.expect, &mut self.got, c);
            }
            at += nl + 1;
        }
        self.buf.drain(..at);
        true
    }
}

/// One event's `"s"` and `"t"`: loss, duplicates and latency.
fn on_event(msg: &[u8], now_ns: u64, expect: &mut u64, got: &mut u32, c: &mut Counts) {
    let (Some(s), Some(t)) = (number_after(msg, b"\"s\":"), number_after(msg, b"\"t\":")) else {
        return;
    };
    match s.cmp(expect) {
        std::cmp::Ordering::Less => c.dups += 1,
        o => {
            if o == std::cmp::Ordering::Greater {
                c.gaps += s - *expect;
            }
            *expect = s + 1;
            *got += 1;
            c.received += 1;
            c.last_ns = now_ns;
            c.hist.record(now_ns.saturating_sub(t) / 1000);
        }
    }
}

/// The unsigned number right after `key` in `msg`.
pub fn number_after(msg: &[u8], key: &[u8]) -> Option<u64> {
    let at = http::find(msg, key)? + key.len();
    let digits = msg[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut v: u64 = 0;
    let mut n = 0;
    for d in digits {
        v = v.checked_mul(10)?.checked_add((d - b'0') as u64)?;
        n += 1;
    }
    (n > 0).then_some(v)
}
