//! A fake Redis on a free port, for the faults a real `redis-server` will
//! not produce on demand: a pub/sub flood the node cannot keep up with,
//! canaries that never come back, RESP garbage and ids no Redis hands out.
//!
//! It speaks just enough RESP2 for a redix node: the command connection's
//! set-up (`CLIENT SETINFO`, `SELECT`), `SCRIPT LOAD` (answering the real
//! SHA-1, which the `redis` crate checks in debug builds), `EVALSHA` of the
//! publish and load scripts (`src/bridge/scripts/`), `GET`, `PUBLISH`,
//! `PING`; on the pub/sub connection `SUBSCRIBE`/`UNSUBSCRIBE` with their
//! confirmations and `message` pushes. Streams are not kept: a load finds
//! an empty stream, and a publish only announces its event.
//!
//! Every pub/sub connection has a writer thread fed by a queue, so the
//! thread answering the command connection never waits on a subscriber
//! that stopped reading (as Redis buffers for a slow subscriber).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PUBLISH_LUA: &str = include_str!("../../src/bridge/scripts/publish.lua");
const LOAD_LUA: &str = include_str!("../../src/bridge/scripts/load.lua");
/// Largest per-millisecond sequence of a stream id redix accepts.
const MAX_SEQ: u64 = (1 << 20) - 1;
/// Messages per write while flooding.
const FLOOD_BATCH: usize = 256;

/// A fake Redis, stopped (every socket shut down) on drop.
pub struct FakeRedis {
    pub port: u16,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    subs: Mutex<Vec<Arc<Sub>>>,
    /// Every accepted socket, to shut down on drop.
    sockets: Mutex<Vec<TcpStream>>,
    /// The last stream id handed out (ms, n).
    last_id: Mutex<(u64, u64)>,
    /// When each pub/sub connection subscribed first, and when it closed.
    opened: Mutex<Vec<Instant>>,
    closed: Mutex<Vec<Instant>>,
    next_sub: AtomicUsize,
    /// Each history load takes this long to answer (ms).
    load_delay_ms: AtomicUsize,
}

/// One pub/sub connection.
struct Sub {
    id: usize,
    channels: Mutex<HashSet<String>>,
    out: Sender<Vec<u8>>,
    /// Floods this pub/sub channel with events while set.
    flood: Mutex<Option<String>>,
    /// Canaries published for this connection are swallowed.
    deaf: AtomicBool,
}

impl FakeRedis {
    pub fn start() -> FakeRedis {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake Redis");
        let port = listener.local_addr().expect("address").port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || accept_loop(listener, s));
        FakeRedis { port, shared }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Pub/sub connections made so far.
    pub fn pubsub_connections(&self) -> usize {
        self.shared.opened.lock().unwrap().len()
    }

    /// From the first pub/sub connection's end to the next one's start.
    pub fn reconnect_gap(&self) -> Option<Duration> {
        let closed = *self.shared.closed.lock().unwrap().first()?;
        let opened = *self.shared.opened.lock().unwrap().get(1)?;
        Some(opened.saturating_duration_since(closed))
    }

    /// The node falls behind: every pub/sub connection open now gets an
    /// endless flood of events on `notify` and none of its canaries.
    pub fn stall_pubsub(&self, notify: &str) {
        for sub in self.shared.subs.lock().unwrap().iter() {
            sub.deaf.store(true, Ordering::Relaxed);
            *sub.flood.lock().unwrap() = Some(notify.to_string());
        }
    }

    /// Every history load from now on takes `ms` to answer (a Redis busy
    /// with big streams).
    pub fn slow_loads(&self, ms: usize) {
        self.shared.load_delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Writes raw bytes on every pub/sub connection open now.
    pub fn inject(&self, bytes: &[u8]) {
        for sub in self.shared.subs.lock().unwrap().iter() {
            let _ = sub.out.send(bytes.to_vec());
        }
    }

    /// Sends a `message` push on `notify` with `payload`, as a publisher
    /// other than redix could.
    pub fn message(&self, notify: &str, payload: &str) {
        self.shared.deliver(notify, payload.as_bytes(), false);
    }
}

impl Drop for FakeRedis {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for s in self.shared.sockets.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wakes the accept loop, which then sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(stream) = stream else { continue };
        if let Ok(clone) = stream.try_clone() {
            shared.sockets.lock().unwrap().push(clone);
        }
        let s = shared.clone();
        std::thread::spawn(move || serve(stream, s));
    }
}

/// One connection: commands in, replies out, until it closes or speaks
/// something that is not RESP.
fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sub: Option<Arc<Sub>> = None;
    'conn: loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let (args, used) = match parse_command(&buf) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(()) => break 'conn,
            };
            buf.drain(..used);
            if let Some(reply) = shared.command(&args, &stream, &mut sub) {
                let sent = match &sub {
                    Some(s) => s.out.send(reply).is_ok(),
                    None => stream.write_all(&reply).is_ok(),
                };
                if !sent {
                    break 'conn;
                }
            }
        }
    }
    if let Some(sub) = sub {
        shared.subs.lock().unwrap().retain(|s| s.id != sub.id);
        shared.closed.lock().unwrap().push(Instant::now());
    }
}

impl Shared {
    /// Runs one command; the reply, or None when it went through the
    /// subscriber's queue already.
    fn command(
        self: &Arc<Self>,
        args: &[Vec<u8>],
        stream: &TcpStream,
        sub: &mut Option<Arc<Sub>>,
    ) -> Option<Vec<u8>> {
        let verb = String::from_utf8_lossy(args.first()?).to_ascii_uppercase();
        let text =
            |i: usize| String::from_utf8_lossy(args.get(i).map_or(&[][..], |a| a)).into_owned();
        Some(match verb.as_str() {
            "CLIENT" | "SELECT" | "AUTH" => b"+OK\r\n".to_vec(),
            "PING" if sub.is_some() => array(&[bulk(b"pong"), bulk(b"")]),
            "PING" => b"+PONG\r\n".to_vec(),
            "SCRIPT" => bulk(sha1_hex(args.get(2)?).as_bytes()),
            "GET" => match *self.last_id.lock().unwrap() {
                (0, 0) => b"$-1\r\n".to_vec(),
                (ms, n) => bulk(format!("{ms}-{n}").as_bytes()),
            },
            "PUBLISH" => {
                let n = self.deliver(&text(1), args.get(2)?, true);
                format!(":{n}\r\n").into_bytes()
            }
            "EVALSHA" => self.evalsha(args),
            "SUBSCRIBE" | "UNSUBSCRIBE" => {
                let s = sub.get_or_insert_with(|| self.new_sub(stream));
                s.subscribe(&verb, &args[1..]);
                return None;
            }
            _ => format!("-ERR unknown command '{verb}'\r\n").into_bytes(),
        })
    }

    fn new_sub(self: &Arc<Self>, stream: &TcpStream) -> Arc<Sub> {
        let (tx, rx) = mpsc::channel();
        let sub = Arc::new(Sub {
            id: self.next_sub.fetch_add(1, Ordering::Relaxed),
            channels: Mutex::new(HashSet::new()),
            out: tx,
            flood: Mutex::new(None),
            deaf: AtomicBool::new(false),
        });
        if let Ok(w) = stream.try_clone() {
            let (s, me) = (self.clone(), sub.clone());
            std::thread::spawn(move || write_loop(w, rx, me, s));
        }
        self.subs.lock().unwrap().push(sub.clone());
        self.opened.lock().unwrap().push(Instant::now());
        sub
    }

    /// The publish script announces its event; the load script finds an
    /// empty stream; any other script answers 0.
    fn evalsha(&self, args: &[Vec<u8>]) -> Vec<u8> {
        let sha = args.get(1).map(|a| String::from_utf8_lossy(a).into_owned());
        let keys: usize = args
            .get(2)
            .and_then(|k| std::str::from_utf8(k).ok()?.parse().ok())
            .unwrap_or(0);
        let argv = args.get(3 + keys..).unwrap_or_default();
        if sha.as_deref() == Some(&sha1_hex(PUBLISH_LUA.as_bytes())) {
            let (Some(notify), Some(data)) = (argv.first(), argv.get(1)) else {
                return b"-ERR publish arguments\r\n".to_vec();
            };
            let id = self.next_ids(1).remove(0);
            let mut payload = id.clone().into_bytes();
            payload.push(b' ');
            payload.extend_from_slice(data);
            self.deliver(&String::from_utf8_lossy(notify), &payload, false);
            return array(&[bulk(id.as_bytes()), b":0\r\n".to_vec()]);
        }
        if sha.as_deref() == Some(&sha1_hex(LOAD_LUA.as_bytes())) {
            let slow = self.load_delay_ms.load(Ordering::Relaxed);
            if slow > 0 {
                std::thread::park_timeout(Duration::from_millis(slow as u64));
            }
            return array(&[bulk(b"0-0"), array(&[]), bulk(b"0-0")]);
        }
        b":0\r\n".to_vec()
    }

    /// `n` fresh stream ids, after every one handed out before.
    fn next_ids(&self, n: usize) -> Vec<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut last = self.last_id.lock().unwrap();
        (0..n)
            .map(|_| {
                *last = match *last {
                    (ms, n) if ms >= now && n < MAX_SEQ => (ms, n + 1),
                    (ms, _) if ms >= now => (ms + 1, 0),
                    _ => (now, 0),
                };
                format!("{}-{}", last.0, last.1)
            })
            .collect()
    }

    /// Queues a `message` push for every subscriber of `channel`; a
    /// canary is swallowed for a deaf one. Returns the receivers.
    fn deliver(&self, channel: &str, payload: &[u8], canary: bool) -> usize {
        let frame = message(channel, payload);
        let mut n = 0;
        for sub in self.subs.lock().unwrap().iter() {
            let wants = sub.channels.lock().unwrap().contains(channel);
            if wants && !(canary && sub.deaf.load(Ordering::Relaxed)) {
                n += usize::from(sub.out.send(frame.clone()).is_ok());
            }
        }
        n
    }
}

impl Sub {
    fn subscribe(&self, verb: &str, channels: &[Vec<u8>]) {
        let kind = verb.to_ascii_lowercase();
        let mut set = self.channels.lock().unwrap();
        for c in channels {
            let name = String::from_utf8_lossy(c).into_owned();
            if verb == "SUBSCRIBE" {
                set.insert(name);
            } else {
                set.remove(&name);
            }
            let count = format!(":{}\r\n", set.len()).into_bytes();
            let _ = self
                .out
                .send(array(&[bulk(kind.as_bytes()), bulk(c), count]));
        }
    }
}

/// A pub/sub connection's writer: its queue, and the flood while one is
/// asked for. Ends when the socket fails.
fn write_loop(mut w: TcpStream, rx: Receiver<Vec<u8>>, sub: Arc<Sub>, shared: Arc<Shared>) {
    let data = format!("[{}]", vec!["1"; 400].join(","));
    loop {
        let flood = sub.flood.lock().unwrap().clone();
        let mut out = Vec::new();
        match &flood {
            None => match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(bytes) => out = bytes,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            },
            Some(notify) => {
                for bytes in rx.try_iter() {
                    out.extend_from_slice(&bytes);
                }
                for id in shared.next_ids(FLOOD_BATCH) {
                    out.extend_from_slice(&message(notify, format!("{id} {data}").as_bytes()));
                }
            }
        }
        if shared.stop.load(Ordering::Relaxed) || w.write_all(&out).is_err() {
            return;
        }
    }
}

fn bulk(b: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", b.len()).into_bytes();
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
    out
}

fn array(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", items.len()).into_bytes();
    for i in items {
        out.extend_from_slice(i);
    }
    out
}

fn message(channel: &str, payload: &[u8]) -> Vec<u8> {
    array(&[bulk(b"message"), bulk(channel.as_bytes()), bulk(payload)])
}

/// A command's arguments and the bytes it took.
type Parsed = (Vec<Vec<u8>>, usize);

/// One command (an array of bulk strings) from the front of `buf`, and
/// the bytes it took; `Err` for anything else.
fn parse_command(buf: &[u8]) -> Result<Option<Parsed>, ()> {
    let mut pos = 0;
    let Some(n) = header(buf, &mut pos, b'*')? else {
        return Ok(None);
    };
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let Some(len) = header(buf, &mut pos, b'$')? else {
            return Ok(None);
        };
        if buf.len() < pos + len + 2 {
            return Ok(None);
        }
        args.push(buf[pos..pos + len].to_vec());
        pos += len + 2;
    }
    Ok(Some((args, pos)))
}

/// Reads `<kind><number>\r\n` at `pos`.
fn header(buf: &[u8], pos: &mut usize, kind: u8) -> Result<Option<usize>, ()> {
    let Some(end) = buf[*pos..].windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() - *pos > 32 {
            Err(())
        } else {
            Ok(None)
        };
    };
    let line = &buf[*pos..*pos + end];
    if line.first() != Some(&kind) {
        return Err(());
    }
    let n = std::str::from_utf8(&line[1..])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(())?;
    *pos += end + 2;
    Ok(Some(n))
}

/// SHA-1 (FIPS 180-4) as lowercase hex: what `SCRIPT LOAD` answers.
pub fn sha1_hex(data: &[u8]) -> String {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}
