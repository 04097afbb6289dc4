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
        Self::start_with_env(args, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_redix"))
            .args(["--listen", "127.0.0.1:0", "--workers", "2"])
            .args(args)
            .env("REDIX_LOG", "info")
            .envs(env.iter().copied())
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
    /// Blocks in `poll(2)` on a pidfd, which turns readable at exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        // SAFETY: pidfd_open on our own child's pid; the fd is closed below.
        let pidfd =
            unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid() as libc::pid_t, 0) } as i32;
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let mut pfd = libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; then closing the fd we opened.
        let ready = unsafe { libc::poll(&mut pfd, 1, within.as_millis() as i32) };
        unsafe { libc::close(pidfd) };
        assert_eq!(ready, 1, "redix did not exit within {within:?}");
        self.child.wait().expect("wait")
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
        if std::thread::panicking() {
            // A failing test shows what the server said.
            eprintln!("--- redix {} stderr ---\n{}", self.addr, self.logs());
        }
    }
}

/// Polls `cond` until it holds; panics with `what` after [`DEADLINE`].
/// The conditions are server state read over HTTP or /proc (metrics, fd
/// counts) with no event to block on, so this re-checks every 10 ms.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends raw bytes, reads until the server closes; returns the text.
#[track_caller]
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in `text`.
#[track_caller]
pub fn status_of(text: &str) -> u16 {
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// One request with `Connection: close`; returns (status, body).
#[track_caller]
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

#[track_caller]
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

/// Appends one publish request (keep-alive) to `out`, for pipelining.
pub fn push_publish(out: &mut Vec<u8>, channel: &str, data: &str) {
    let body = format!(r#"{{"channel":"{channel}","data":{data}}}"#);
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body.as_bytes());
}

/// Reads one `200` response off a keep-alive connection; returns its JSON body.
pub fn read_json_response(reader: &mut BufReader<TcpStream>) -> serde_json::Value {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let mut len = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            len = v.trim().parse().expect("length");
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).expect("body");
    serde_json::from_slice(&body).expect("json body")
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
        self.publish_id(channel, data).parse().expect("numeric id")
    }

    /// Publishes; returns the event id as given (a number, or a Redis
    /// stream id in Redis mode).
    pub fn publish_id(&mut self, channel: &str, data: &str) -> String {
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
        v["id"].as_str().expect("id").to_string()
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

/// A real `redis-server` on a free port, killed on drop; the tests can
/// kill, restart (same port), pause and resume it.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    /// Starts `redis-server` from PATH without persistence and waits until
    /// it answers PING.
    pub fn start() -> RedisServer {
        for _ in 0..5 {
            let port = free_port();
            let mut r = RedisServer { child: None, port };
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not come up on any of 5 free ports");
    }

    /// Starts on a given port (one a node was already told about).
    pub fn start_on(port: u16) -> RedisServer {
        let mut r = RedisServer { child: None, port };
        assert!(r.spawn(), "redis-server could not take port {port}");
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Spawns on `self.port`; false when it exited (the port was taken).
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (the test command installs it)");
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            if self.ping() {
                return true;
            }
            if let Some(c) = self.child.as_mut() {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    self.child = None;
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server on port {port} did not answer PING");
    }

    /// Runs one command (RESP over a fresh connection); the raw reply.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = vec![0; 64 * 1024];
        let n = s.read(&mut buf).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    pub fn ping(&self) -> bool {
        self.command(&["PING"])
            .is_some_and(|r| r.starts_with("+PONG"))
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server could not take port {} again",
            self.port
        );
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A redix node in Redis mode, started and waited on until `/readyz` says
/// the Redis round trip works.
pub fn redis_node(redis: &RedisServer, args: &[&str]) -> Server {
    let url = redis.url();
    let mut all = vec!["--redis", url.as_str()];
    all.extend_from_slice(args);
    let node = Server::start(&all);
    wait_until("the node to be ready", || {
        get(node.addr, "/readyz").0 == 200
    });
    node
}

/// Publishes and returns (status, body as JSON or the raw text as a string).
#[track_caller]
pub fn try_publish(addr: SocketAddr, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = request(
        addr,
        "POST",
        "/api/publish",
        &["Content-Type: application/json"],
        body,
    );
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, v)
}

/// Publishes in Redis mode; returns the stream id.
#[track_caller]
pub fn publish_stream_id(addr: SocketAddr, channel: &str, data: &str) -> String {
    let (status, v) = try_publish(addr, &format!(r#"{{"channel":"{channel}","data":{data}}}"#));
    assert_eq!(status, 200, "publish: {v}");
    v["id"].as_str().expect("id").to_string()
}

/// A Redis stream id `ms-n` as a pair that orders like the id.
pub fn stream_id(s: &str) -> (u64, u64) {
    let (ms, n) = s
        .split_once('-')
        .unwrap_or_else(|| panic!("not a stream id: {s}"));
    (ms.parse().expect("ms"), n.parse().expect("n"))
}

/// Deterministic per-client randomness (xorshift).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// An id as a pair that orders like the id: a plain number `n` is `(n, 0)`,
/// a Redis stream id `ms-n` is `(ms, n)`.
pub fn id_key(id: &str) -> (u64, u64) {
    match id.split_once('-') {
        Some(_) => stream_id(id),
        None => (id.parse().expect("numeric id"), 0),
    }
}

/// An SSE client of `chans` that drops its connection at random moments
/// (half of the time with RST) and comes back, to a node picked at random
/// from `addrs`, with its last id, until it has seen the `{"end":true}`
/// event of each of its channels. Returns (channel, id) in order.
pub fn churning_sse(addrs: &[SocketAddr], i: usize, chans: &[&str]) -> Vec<(String, String)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1000_0001));
    let names = chans.join(",");
    let mut got: Vec<(String, String)> = Vec::new();
    let mut ended = 0;
    loop {
        // From 0 the first time: everything since the start, whenever this
        // client happens to connect.
        let last = got.last().map_or("0", |(_, id)| id.as_str());
        let addr = addrs[rng.below(addrs.len() as u64) as usize];
        let mut c = SseClient::connect(addr, &format!("{names}&lastEventId={last}"));
        assert_eq!(c.status, 200, "client {i}: {}", c.head);
        let mut budget = 20 + rng.below(400);
        while budget > 0 {
            let Some(ev) = c.next_message() else { break };
            assert_eq!(ev.event.as_deref(), Some("message"), "client {i}: {ev:?}");
            let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
            let id = ev.id.expect("id");
            got.push((v["channel"].as_str().unwrap().to_string(), id));
            budget -= 1;
            ended += usize::from(v["data"]["end"] == true);
            if ended == chans.len() {
                return got;
            }
        }
        if rng.below(2) == 0 {
            c.abort();
        }
    }
}

/// A WebSocket client that churns the same way, resuming each channel from
/// the last id it got on that channel.
pub fn churning_ws(addrs: &[SocketAddr], i: usize, chans: &[&str]) -> Vec<(String, String)> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ ((i as u64 + 7) * 0x3000_0001));
    let mut got: Vec<(String, String)> = Vec::new();
    let mut ended = 0;
    loop {
        let addr = addrs[rng.below(addrs.len() as u64) as usize];
        let mut ws = RawWs::connect(addr, "/ws", &[]);
        assert_eq!(ws.status, 101);
        for ch in chans {
            let since = got
                .iter()
                .rev()
                .find(|(c, _)| c == ch)
                .map_or("0", |(_, id)| id.as_str());
            ws.send_text(&format!(
                r#"{{"type":"subscribe","channel":"{ch}","since":"{since}"}}"#
            ));
        }
        let mut budget = 20 + rng.below(400);
        while budget > 0 {
            let Some(frame) = ws.read_non_ping() else {
                break;
            };
            let v: serde_json::Value = serde_json::from_str(&frame.text()).unwrap();
            match v["type"].as_str() {
                Some("subscribed") => continue,
                Some("message") => {}
                other => panic!("client {i}: unexpected {other:?}: {v}"),
            }
            let id = v["id"].as_str().unwrap().to_string();
            got.push((v["channel"].as_str().unwrap().to_string(), id));
            budget -= 1;
            ended += usize::from(v["data"]["end"] == true);
            if ended == chans.len() {
                return got;
            }
        }
        if rng.below(2) == 0 {
            ws.abort();
        }
    }
}

/// Checks what a churning client got against what was published: every
/// event of its channels exactly once, in order per channel, and for an
/// SSE client (one cursor) in id order over the whole stream.
pub fn check_churned(
    i: usize,
    chans: &[&str],
    got: &[(String, String)],
    published: &[(String, String)],
    one_stream: bool,
) {
    for ch in chans {
        let of = |list: &[(String, String)]| -> Vec<String> {
            list.iter()
                .filter(|(c, _)| c == ch)
                .map(|(_, id)| id.clone())
                .collect()
        };
        let (want, have) = (of(published), of(got));
        if have != want {
            let at = have
                .iter()
                .zip(&want)
                .position(|(h, w)| h != w)
                .unwrap_or(want.len());
            let lo = at.saturating_sub(3);
            let pos = |id: &String| got.iter().position(|(c, x)| c == ch && x == id);
            eprintln!(
                "client {i} channel {ch}: first difference at {at}: have {:?} want {:?}; in the stream at {:?}; stream around: {:?}",
                &have[lo..(at + 3).min(have.len())],
                &want[lo..(at + 3).min(want.len())],
                have.get(at).and_then(pos),
                have.get(at).and_then(pos).map(|p| &got[p.saturating_sub(4)..(p + 4).min(got.len())]),
            );
        }
        assert_eq!(have.len(), want.len(), "client {i} channel {ch}: count");
        assert!(have == want, "client {i} channel {ch}: events differ");
    }
    if one_stream {
        assert!(
            got.windows(2).all(|w| id_key(&w[0].1) < id_key(&w[1].1)),
            "client {i}: stream order"
        );
    }
}

/// The `/debug/fds` report once it accounts for every fd. One report can
/// catch a connection another reactor is closing at that moment (counted,
/// its fd already gone), so this asks again until the books balance.
pub fn fds_accounted(server: &Server) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until("/debug/fds to balance", || {
        let (status, body) = get(server.addr, "/debug/fds");
        assert_eq!(status, 200, "{body}");
        last = serde_json::from_str(&body).expect("json");
        last["unaccounted"] == 0
    });
    last
}
