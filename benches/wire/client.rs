//! The wire bench's HTTP side: one-shot GETs and `/metrics/prom`, the keep-alive publisher
//! (blocking, one answer per request), and opening a stream (request sent, response head
//! read, the body bytes that came with it kept).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::support::http::{find, parse_response, post_json, publish_body, status_of};
use crate::support::ws;
use crate::Res;

/// The masking key of every frame the wire bench sends (only its presence matters here).
const MASK: [u8; 4] = [0x5a, 0x13, 0xc7, 0x2e];

pub fn http_get(addr: SocketAddr, path: &str) -> Res<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("GET {path}: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| format!("GET {path}: {e}"))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status_of(&text), body))
}

/// Every sample of `/metrics/prom`, keyed by name with its labels as printed.
pub fn metrics(addr: SocketAddr) -> Res<HashMap<String, f64>> {
    let (status, body) = http_get(addr, "/metrics/prom")?;
    if status != 200 {
        return Err(format!("/metrics/prom answered {status}"));
    }
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

pub fn delta(m0: &HashMap<String, f64>, m1: &HashMap<String, f64>, k: &str) -> f64 {
    m1.get(k).copied().unwrap_or(0.0) - m0.get(k).copied().unwrap_or(0.0)
}

/// A redix `POST /api/publish` of `data` (JSON) on `channel`.
pub fn publish_request(channel: &str, data: &str) -> Vec<u8> {
    post_json("bench", "/api/publish", &publish_body(channel, data))
}

/// A keep-alive HTTP/1.1 connection, one request answered at a time.
pub struct KeepAlive {
    s: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> Res<KeepAlive> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        Ok(KeepAlive {
            s,
            buf: Vec::with_capacity(1 << 16),
        })
    }

    pub fn send(&mut self, bytes: &[u8]) -> Res<()> {
        self.s
            .write_all(bytes)
            .map_err(|e| format!("publish write: {e}"))
    }

    /// The next response: (status, body).
    fn response(&mut self) -> Res<(u16, Vec<u8>)> {
        loop {
            if let Some(r) = parse_response(&self.buf, false) {
                let r = r?;
                let body = self.buf[r.body..r.len].to_vec();
                self.buf.drain(..r.len);
                return Ok((r.status, body));
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return Err("publisher connection closed by redix".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("publish read: {e}")),
            }
        }
    }

    /// Reads one publish answer; returns the event id.
    pub fn publish_answer(&mut self) -> Res<u64> {
        let (status, body) = self.response()?;
        if status != 200 {
            return Err(format!(
                "publish answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| format!("publish answer: {e}"))?;
        v["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("publish answer without id: {v}"))
    }
}

/// Connects and sends `request`; returns the socket, the response head and any body bytes
/// that came with it.
pub fn open(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Res<(TcpStream, String, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    // The head may take a while under load; reads after it use `timeout`.
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    s.write_all(request).map_err(|e| format!("request: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
            let rest = buf[i + 4..].to_vec();
            s.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            return Ok((s, head, rest));
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                return Err(format!(
                    "closed before a response head: {:?}",
                    String::from_utf8_lossy(&buf)
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("reading the response head: {e}")),
        }
    }
}

/// A masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    ws::push_client_frame(&mut f, opcode, payload, MASK);
    f
}

/// The upgrade request with key `key`, offering permessage-deflate if `deflate`.
pub fn ws_upgrade_request(path: &str, key: &str, deflate: bool) -> Vec<u8> {
    ws::upgrade_request(path, "bench", key, deflate)
}

/// Checks a `101` (head with its blank line): accept value, permessage-deflate agreed
/// exactly when offered. Returns the extensions header.
pub fn check_upgrade(head: &str, key: &str, want_deflate: bool) -> Res<String> {
    ws::check_upgrade(head.as_bytes(), &ws::accept_for(key), want_deflate)
}

pub fn ws_key(n: usize) -> String {
    // 16 bytes → 24 base64 characters; only the shape matters to the server.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    let mut x = (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for _ in 0..21 {
        s.push(alphabet[(x % 64) as usize] as char);
        x = x.rotate_left(7) ^ 0x5555;
    }
    s.push_str("A==");
    s
}
