//! The publisher: `POST /api/publish` on one keep-alive connection (so every event enters
//! through the one node the kernel gave that connection), paced open-loop (event i due at
//! start + i/rate). Each event is `{"s":<sequence number>,"t":<ns since the epoch, taken
//! just before the request is written>,"pad":"xx…"}`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::http;

pub struct Publisher {
    addr: SocketAddr,
    conn: Option<TcpStream>,
    channel: String,
    pad: String,
    /// the next sequence number
    pub seq: u64,
}

pub struct Published {
    pub ok: u64,
    pub failed: u64,
    /// the slowest publish round trip, µs
    pub max_rtt_us: u64,
}

impl Publisher {
    pub fn new(addr: SocketAddr, channel: &str, payload: usize) -> Publisher {
        Publisher {
            addr,
            conn: None,
            channel: channel.to_owned(),
            pad: "x".repeat(payload.saturating_sub(40)),
            seq: 0,
        }
    }

    /// `rate` events/s for `secs` seconds (stops early when `stop` says so).
    pub fn run(&mut self, rate: f64, secs: f64, stop: impl Fn() -> bool) -> Published {
        let started = Instant::now();
        let total = (rate * secs).round() as u64;
        let mut p = Published {
            ok: 0,
            failed: 0,
            max_rtt_us: 0,
        };
        for i in 0..total {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if stop() {
                break;
            }
            let t0 = Instant::now();
            match self.publish_one() {
                Ok(()) => p.ok += 1,
                Err(e) => {
                    eprintln!("publish {}: {e}", self.seq);
                    p.failed += 1;
                    self.conn = None;
                }
            }
            self.seq += 1;
            p.max_rtt_us = p.max_rtt_us.max(t0.elapsed().as_micros() as u64);
        }
        p
    }

    fn publish_one(&mut self) -> Result<(), String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr).map_err(|e| e.to_string())?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            self.conn = Some(s);
        }
        let conn = self.conn.as_mut().ok_or("no connection")?;
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let data = format!("{{\"s\":{},\"t\":{t},\"pad\":\"{}\"}}", self.seq, self.pad);
        let body = http::publish_body(&self.channel, &data);
        conn.write_all(&http::post_json("box", "/api/publish", &body))
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(r) = http::parse_response(&buf, false) {
                let r = r?;
                return match r.status {
                    200..=299 => Ok(()),
                    s => Err(format!(
                        "status {s}: {}",
                        String::from_utf8_lossy(&buf[r.body..r.len])
                    )),
                };
            }
            let k = conn.read(&mut chunk).map_err(|e| e.to_string())?;
            if k == 0 {
                return Err("publish connection closed".into());
            }
            buf.extend_from_slice(&chunk[..k]);
        }
    }
}
