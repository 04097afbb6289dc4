//! Test harness: the real `redix` binary on port 0, raw HTTP and SSE
//! clients over real sockets, and waits on conditions with deadlines.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running redix process, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts redix with two reactors on a free port plus `args`, and waits
    /// for its `redix listening on` line.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_redix"))
            .args(["--listen", "127.0.0.1:0", "--workers", "2"])
            .args(args)
            .env("REDIX_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn redix");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                if s.len() < 1 << 20 {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("redix listening on ") {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("address"));
                }
            }
        });
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("redix did not start: {}", stderr.lock().unwrap());
            }
        };
        Server {
            child,
            addr,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open file descriptors of the server process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Waits for the process to exit, failing the test after the deadline.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < within,
                "redix did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The value of one metric line (name with labels, as printed).
    pub fn metric(&self, name: &str) -> f64 {
        let (status, body) = get(self.addr, "/metrics/prom");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no metric {name}"))
            .trim()
            .parse()
            .expect("metric value")
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` until it holds; panics with `what` after [`DEADLINE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends raw bytes, reads until the server closes; returns the text.
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in `text`.
pub fn status_of(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// One request with `Connection: close`; returns (status, body).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    let text = raw_exchange(addr, req.as_bytes());
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status_of(&text), body)
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path, &[], "")
}

/// Publishes `data` (JSON) to `channel`; returns the event id.
pub fn publish(addr: SocketAddr, channel: &str, data: &str) -> u64 {
    let (status, body) = request(
        addr,
        "POST",
        "/api/publish",
        &["Content-Type: application/json"],
        &format!(r#"{{"channel":"{channel}","data":{data}}}"#),
    );
    assert_eq!(status, 200, "publish: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("publish answer");
    v["id"].as_str().expect("id").parse().expect("numeric id")
}

/// A keep-alive publisher: one connection for many publishes.
pub struct Publisher {
    stream: BufReader<TcpStream>,
}

impl Publisher {
    pub fn connect(addr: SocketAddr) -> Publisher {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        Publisher {
            stream: BufReader::new(s),
        }
    }

    pub fn publish(&mut self, channel: &str, data: &str) -> u64 {
        let body = format!(r#"{{"channel":"{channel}","data":{data}}}"#);
        let req = format!(
            "POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream
            .get_mut()
            .write_all(req.as_bytes())
            .expect("write publish");
        let mut len = 0;
        let mut status = 0;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).expect("read response");
            let line = line.trim_end();
            if status == 0 {
                status = status_of(line);
            } else if line.is_empty() {
                break;
            } else if let Some(v) = line.strip_prefix("Content-Length: ") {
                len = v.parse().expect("length");
            }
        }
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).expect("body");
        assert_eq!(status, 200, "publish: {}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        v["id"].as_str().expect("id").parse().expect("numeric id")
    }
}

/// One SSE event as a client sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

/// A raw SSE client.
pub struct SseClient {
    pub reader: BufReader<TcpStream>,
    pub status: u16,
    pub head: String,
}

impl SseClient {
    pub fn connect(addr: SocketAddr, channels: &str) -> SseClient {
        Self::connect_with(addr, channels, None)
    }

    /// Connects from a socket prepared by the caller (buffer sizes, source address).
    pub fn connect_with(
        addr: SocketAddr,
        channels: &str,
        socket: Option<socket2::Socket>,
    ) -> SseClient {
        let stream = match socket {
            Some(sock) => {
                sock.connect(&addr.into()).expect("connect");
                TcpStream::from(sock)
            }
            None => TcpStream::connect(addr).expect("connect"),
        };
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut w = stream.try_clone().unwrap();
        write!(w, "GET /api/stream?channels={channels} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n").unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let status = if head.is_empty() { 0 } else { status_of(&head) };
        SseClient {
            reader,
            status,
            head,
        }
    }

    /// The next event (comments skipped); `None` at end of stream.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        let mut ev = SseEvent::default();
        let mut seen = false;
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if seen {
                    return Some(ev);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            seen = true;
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            match field {
                "id" => ev.id = Some(value.to_string()),
                "event" => ev.event = Some(value.to_string()),
                "data" => ev.data.push_str(value),
                "retry" => ev.retry = value.parse().ok(),
                _ => {}
            }
        }
    }

    /// The next event that carries data.
    pub fn next_message(&mut self) -> Option<SseEvent> {
        loop {
            let ev = self.next_event()?;
            if ev.event.is_some() {
                return Some(ev);
            }
        }
    }

    /// Resets the connection (RST instead of FIN) as it closes.
    pub fn abort(self) {
        let sock = socket2::Socket::from(self.reader.into_inner());
        let _ = sock.set_linger(Some(Duration::ZERO));
    }
}
