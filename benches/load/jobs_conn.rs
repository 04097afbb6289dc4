//! One keep-alive HTTP/1.1 client connection of the jobs scenario: a non-blocking socket
//! bound to its own source address, one request at a time (written as far as the socket takes
//! it), its answer read until complete (`support::http::parse_response`). The burst
//! (`jobs_submit`) and the parked requests (`jobs_park`) drive it from their mio loops:
//! `progress` after every readiness event (edge-triggered: it reads and writes until
//! `WouldBlock`).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::support::http::parse_response;

/// What a connection has to report after `progress` or `send`.
#[derive(Debug)]
pub enum Step {
    /// nothing new
    Wait,
    /// the connect completed; nothing is in flight
    Connected,
    /// a whole answer (the connection is ready for the next request unless `close`)
    Answer {
        status: u16,
        body: String,
        close: bool,
    },
    /// the connection is unusable (close it)
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Idle,
    Connecting,
    /// connected, nothing in flight
    Ready,
    /// request bytes written so far
    Writing(usize),
    Reading,
}

pub struct PostConn {
    pub src: Ipv4Addr,
    sock: Option<TcpStream>,
    st: St,
    req: Vec<u8>,
    inb: Vec<u8>,
    /// when the current request's write began
    pub sent_at: Instant,
}

impl PostConn {
    pub fn new(src: Ipv4Addr) -> PostConn {
        PostConn {
            src,
            sock: None,
            st: St::Idle,
            req: Vec::new(),
            inb: Vec::new(),
            sent_at: Instant::now(),
        }
    }

    /// A non-blocking connect from `src` to `server`, registered as `tok`.
    pub fn connect(&mut self, tok: usize, server: SocketAddr, reg: &Registry) -> io::Result<()> {
        let mut ms = crate::support::net::connect_from(self.src, server)?;
        reg.register(&mut ms, Token(tok), Interest::READABLE | Interest::WRITABLE)?;
        self.sock = Some(ms);
        self.st = St::Connecting;
        Ok(())
    }

    pub fn ready(&self) -> bool {
        self.st == St::Ready
    }

    /// A request is written (in part or whole) and its answer not yet read.
    pub fn in_flight(&self) -> bool {
        matches!(self.st, St::Writing(_) | St::Reading)
    }

    pub fn is_open(&self) -> bool {
        self.sock.is_some()
    }

    /// Starts `req` on a ready connection; its clock starts now.
    pub fn send(&mut self, req: Vec<u8>) -> Step {
        if self.st != St::Ready {
            return Step::Failed("send on a connection that is not ready".into());
        }
        self.req = req;
        self.inb.clear();
        self.st = St::Writing(0);
        self.sent_at = Instant::now();
        self.progress()
    }

    /// Runs the connection as far as the socket allows.
    pub fn progress(&mut self) -> Step {
        loop {
            let Some(sock) = self.sock.as_mut() else {
                return Step::Wait;
            };
            match self.st {
                St::Idle => return Step::Wait,
                St::Connecting => {
                    match sock.take_error() {
                        Ok(Some(e)) | Err(e) => return Step::Failed(format!("connect: {e}")),
                        Ok(None) => {}
                    }
                    return match sock.peer_addr() {
                        Ok(_) => {
                            self.st = St::Ready;
                            Step::Connected
                        }
                        Err(e) if e.kind() == ErrorKind::NotConnected => Step::Wait,
                        Err(e) => Step::Failed(format!("connect: {e}")),
                    };
                }
                St::Writing(off) => match sock.write(&self.req[off..]) {
                    Ok(n) if off + n == self.req.len() => self.st = St::Reading,
                    Ok(n) => self.st = St::Writing(off + n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Step::Failed(format!("write: {e}")),
                },
                St::Reading | St::Ready => return self.read(),
            }
        }
    }

    /// Reads until `WouldBlock`; an answer once one is complete. On a ready connection
    /// anything read (bytes or the server's close) is a failure.
    fn read(&mut self) -> Step {
        let mut chunk = [0u8; 4096];
        loop {
            let Some(sock) = self.sock.as_mut() else {
                return Step::Wait;
            };
            let n = match sock.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Step::Failed(format!("read: {e}")),
            };
            if self.st == St::Ready {
                return Step::Failed(match n {
                    0 => "closed by the server while idle".into(),
                    _ => format!("{n} bytes nobody asked for"),
                });
            }
            self.inb.extend_from_slice(&chunk[..n]);
            match parse_response(&self.inb, n == 0) {
                Some(Ok(r)) => {
                    let body = String::from_utf8_lossy(&self.inb[r.body..r.len]).into_owned();
                    self.st = St::Ready;
                    self.inb.clear();
                    return Step::Answer {
                        status: r.status,
                        body,
                        close: r.close,
                    };
                }
                Some(Err(e)) => return Step::Failed(e),
                None if n == 0 => {
                    return Step::Failed("closed by the server before an answer".into())
                }
                None => {}
            }
        }
    }

    pub fn close(&mut self, reg: &Registry) {
        if let Some(mut s) = self.sock.take() {
            let _ = reg.deregister(&mut s);
        }
        self.st = St::Idle;
    }
}
