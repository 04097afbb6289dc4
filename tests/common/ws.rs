//! WebSocket clients: [`RawWs`], a hand-rolled client over a plain socket
//! with control of every frame (for protocol-violation tests), and a check
//! that Python's `websockets` (an independent client) is available.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use super::http::status_of;
use super::server::DEADLINE;

/// A raw WebSocket client over a plain socket: full control of every
/// frame, for protocol-violation tests.
pub struct RawWs {
    pub stream: TcpStream,
    pub status: u16,
    pub head: String,
    buf: Vec<u8>,
}

/// One frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// Close code and reason of a close frame.
    pub fn close_code(&self) -> (u16, String) {
        assert_eq!(self.opcode, 8, "not a close frame: {self:?}");
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        (
            code,
            String::from_utf8_lossy(&self.payload[2..]).into_owned(),
        )
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.payload.clone()).expect("utf-8 text")
    }
}

impl RawWs {
    pub fn connect(addr: SocketAddr, path: &str, extra: &[&str]) -> RawWs {
        Self::handshake(TcpStream::connect(addr).expect("connect"), path, extra)
    }

    /// Connects with a 4 KiB receive buffer: a client that is easy to stall.
    pub fn connect_small(addr: SocketAddr, path: &str) -> RawWs {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.connect(&addr.into()).expect("connect");
        Self::handshake(TcpStream::from(sock), path, &[])
    }

    fn handshake(mut stream: TcpStream, path: &str, extra: &[&str]) -> RawWs {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        );
        for h in extra {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).expect("handshake");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                break buf.len();
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = if head.is_empty() { 0 } else { status_of(&head) };
        let rest = buf[head_end..].to_vec();
        RawWs {
            stream,
            status,
            head,
            buf: rest,
        }
    }

    /// Sends one frame; `mask` false makes an (illegal) unmasked client frame.
    pub fn send_frame(&mut self, first_byte: u8, payload: &[u8], mask: bool) {
        let mut f = vec![first_byte];
        let m = if mask { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = [0x37, 0xfa, 0x21, 0x3d];
        if mask {
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        self.stream.write_all(&f).expect("send frame");
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_frame(0x81, text.as_bytes(), true);
    }

    /// The next frame, or `None` once the server closed the connection.
    pub fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = Self::parse(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame that is not a ping.
    pub fn read_non_ping(&mut self) -> Option<RawFrame> {
        loop {
            let f = self.read_frame()?;
            if f.opcode != 9 {
                return Some(f);
            }
        }
    }

    fn parse(b: &[u8]) -> Option<(RawFrame, usize)> {
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[1] & 0x80, 0, "server frames are never masked");
        let (len, at) = match b[1] & 0x7f {
            126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
            127 => (
                u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let payload = b.get(at..at + len)?.to_vec();
        let frame = RawFrame {
            fin: b[0] & 0x80 != 0,
            rsv1: b[0] & 0x40 != 0,
            opcode: b[0] & 0x0f,
            payload,
        };
        Some((frame, at + len))
    }

    /// Resets the connection as it closes.
    pub fn abort(self) {
        let sock = socket2::Socket::from(self.stream);
        let _ = sock.set_linger(Some(Duration::ZERO));
    }
}

/// Subscribes a raw client and waits for the ack.
pub fn ws_subscribe(ws: &mut RawWs, channel: &str) {
    ws.send_text(&format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#));
    let ack = ws.read_non_ping().expect("ack");
    let v: serde_json::Value = serde_json::from_str(&ack.text()).unwrap();
    assert_eq!(v["type"], "subscribed", "{v}");
}

/// Makes sure Python's `websockets` is importable (the test command
/// installs it; this only reports clearly when it is missing).
pub fn python_websockets() -> bool {
    Command::new("python3")
        .args(["-c", "import websockets.sync.client"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
