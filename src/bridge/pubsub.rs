//! The pub/sub thread: one connection SUBSCRIBEd to exactly the channels
//! with local subscribers, read continuously so Redis never finds us slow.
//! (Redis Cluster receives with sharded pub/sub instead, see
//! [`super::shards`], which reuses this file's [`Reader`].)
//!
//! A reader thread per connection does nothing but move bytes from the
//! socket into a bounded queue of chunks (at most [`MAX_BACKLOG`] bytes),
//! so a burst waits here, counted in `redix_redis_pubsub_backlog_bytes`,
//! rather than in Redis, which would cut a pub/sub client whose output
//! buffer grows past its limit. The queue's bound is the backpressure of
//! last resort: when it is full the reader stops reading.
//!
//! The loop, with a short read timeout so changes go out while it reads:
//! 1. take the hub's channel changes and (UN)SUBSCRIBE them;
//! 2. read what arrived and hand every message to the hub;
//! 3. a confirmed SUBSCRIBE starts the channel's history load (it must
//!    follow the confirmation, or an event published between the load and
//!    the subscription would be missed);
//! 4. the canary coming back proves the whole path for `/readyz`.
//!
//! After a lost connection: the hub is told (waiters get 503), then
//! reconnect with backoff, SUBSCRIBE every wanted channel again and reload
//! each, which delivers what was published meanwhile.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::loads::Unsent;
use super::Backoff;
use crate::clock::Clock;
use crate::health::Beat;
use crate::hub::{ids, Hub, RemoteEvent};
use crate::link::Redis;
use crate::proto::resp::{self, Value};

/// How long the loop waits for bytes, so channel changes go out promptly.
pub(super) const READ_TIMEOUT: Duration = Duration::from_millis(20);
/// Largest message accepted (the publish body limit is far lower).
pub(super) const MAX_MESSAGE: usize = 16 << 20;
/// Bytes read per call.
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from Redis and not yet handled, at most.
pub const MAX_BACKLOG: usize = 64 << 20;
/// Channels per SUBSCRIBE command.
const SUBSCRIBE_BATCH: usize = 512;

/// The pub/sub thread's inputs.
pub struct PubSub {
    pub redis: Arc<Redis>,
    pub hub: Arc<Hub>,
    pub clock: Clock,
    pub beat: Beat,
}

impl PubSub {
    /// Runs sessions for ever, reconnecting with backoff.
    pub fn run(self) {
        let redis = &*self.redis;
        let mut backoff = Backoff::new(redis.config.backoff_min_ms, redis.config.backoff_max_ms);
        let mut quiet = super::Quiet::default();
        loop {
            let why = match Session::open(&self) {
                Ok(mut session) => {
                    redis.link.connections.fetch_add(1, Ordering::Relaxed);
                    let why = session.serve();
                    let worked = session.worked;
                    // The reader thread has ended and the socket is closed
                    // once this returns (see `Reader`'s drop).
                    drop(session);
                    redis.link.connections.fetch_sub(1, Ordering::Relaxed);
                    // Only a link that worked starts the backoff over.
                    if worked {
                        backoff.reset();
                        quiet.reset();
                    }
                    why
                }
                Err(e) => e,
            };
            redis.link.pubsub_up.store(false, Ordering::Release);
            redis.link.backlog_bytes.store(0, Ordering::Relaxed);
            redis.link.subscribed.store(0, Ordering::Relaxed);
            self.hub.set_link(false);
            let wait = backoff.next_wait();
            quiet.warn(format_args!(
                "Redis pub/sub: {why}; reconnecting in {wait:?}"
            ));
            redis.link.reconnects.fetch_add(1, Ordering::Relaxed);
            self.beat.sleep(wait);
        }
    }
}

struct Session<'a> {
    redis: &'a Redis,
    hub: &'a Hub,
    clock: Clock,
    beat: &'a Beat,
    /// Shared with the reader thread (`Read` and `Write` work on
    /// `&TcpStream`): one socket, one descriptor.
    stream: Arc<TcpStream>,
    reader: Reader,
    buf: Vec<u8>,
    /// Channels asked of Redis (SUBSCRIBE sent, no UNSUBSCRIBE since).
    subscribed: HashSet<Arc<str>>,
    canary: String,
    /// Loads the command queue had no room for; retried every turn.
    unsent: Unsent,
    /// When the last canary came back, on the hub clock.
    canary_seen_ms: u64,
    /// A canary came back on this connection: the link worked.
    worked: bool,
    /// The master's generation this connection was made under.
    generation: u64,
}

impl<'a> Session<'a> {
    fn open(ps: &'a PubSub) -> Result<Session<'a>, String> {
        let redis = &*ps.redis;
        let generation = redis.master.generation();
        let ep = &redis.master.endpoint()?;
        let timeout = Duration::from_millis(redis.config.timeout_ms);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(ep.host.as_str(), ep.port))
            .map_err(|e| format!("resolve {}: {e}", ep.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", ep.host))?;
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let setup = |s: &TcpStream| -> io::Result<()> {
            s.set_write_timeout(Some(timeout))?;
            s.set_nodelay(true)
        };
        setup(&stream).map_err(|e| format!("socket options: {e}"))?;
        let stream = Arc::new(stream);
        let reader = Reader::start(stream.clone())?;
        let mut session = Session {
            redis,
            hub: &ps.hub,
            clock: ps.clock,
            beat: &ps.beat,
            stream,
            reader,
            buf: Vec::with_capacity(64 * 1024),
            subscribed: HashSet::new(),
            canary: redis.names.canary(&redis.node),
            unsent: Unsent::default(),
            canary_seen_ms: ps.clock.now_ms(),
            worked: false,
            generation,
        };
        if let Some(pass) = &ep.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &ep.username {
                args.push(user.as_bytes());
            }
            args.push(pass.as_bytes());
            session.send(&resp::command(&args))?;
        }
        let canary = session.canary.clone();
        session.send(&resp::command(&[b"SUBSCRIBE", canary.as_bytes()]))?;
        // Everything wanted now; later changes come from `take_changes`.
        ps.hub.take_changes();
        let wanted = ps.hub.wanted_channels();
        session.subscribe(&wanted)?;
        log::info!(
            "Redis pub/sub connection up; subscribing {} channels",
            wanted.len()
        );
        Ok(session)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        (&*self.stream)
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))
    }

    fn subscribe(&mut self, channels: &[Arc<str>]) -> Result<(), String> {
        self.command(b"SUBSCRIBE", channels)?;
        self.subscribed.extend(channels.iter().cloned());
        let n = self.subscribed.len() as u64;
        self.redis.link.subscribed.store(n, Ordering::Relaxed);
        Ok(())
    }

    fn command(&mut self, verb: &[u8], channels: &[Arc<str>]) -> Result<(), String> {
        for chunk in channels.chunks(SUBSCRIBE_BATCH) {
            let notify: Vec<String> = chunk.iter().map(|c| self.redis.names.notify(c)).collect();
            let mut args: Vec<&[u8]> = vec![verb];
            args.extend(notify.iter().map(|n| n.as_bytes()));
            self.send(&resp::command(&args))?;
        }
        Ok(())
    }

    /// Runs until the connection fails; returns why.
    fn serve(&mut self) -> String {
        loop {
            self.beat.stamp();
            if self.redis.master.generation() != self.generation {
                // A demoted master would keep this connection open and
                // silent: follow the new one.
                return "the master moved".into();
            }
            if let Err(e) = self.apply_changes() {
                return e;
            }
            self.retry_unsent();
            match self.reader.chunks.recv_timeout(READ_TIMEOUT) {
                Ok(Ok(chunk)) => {
                    let n = chunk.len() as u64;
                    self.reader.queued.fetch_sub(n, Ordering::Relaxed);
                    self.buf.extend_from_slice(&chunk);
                    if let Err(e) = self.drain_messages() {
                        return e;
                    }
                }
                Ok(Err(why)) => return why,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return "the reader stopped".into(),
            }
            self.report_backlog();
            if let Err(e) = self.check_canary() {
                return e;
            }
        }
    }

    fn apply_changes(&mut self) -> Result<(), String> {
        let changes = self.hub.take_changes();
        if changes.is_empty() {
            return Ok(());
        }
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for (channel, wanted) in changes {
            match (wanted, self.subscribed.contains(&channel)) {
                (true, false) => add.push(channel),
                // Still subscribed from before: Redis will not confirm
                // again, so the load starts now.
                (true, true) => self.start_load(channel),
                (false, true) => remove.push(channel),
                (false, false) => {}
            }
        }
        if !remove.is_empty() {
            self.command(b"UNSUBSCRIBE", &remove)?;
            for c in &remove {
                self.subscribed.remove(c);
            }
            let n = self.subscribed.len() as u64;
            self.redis.link.subscribed.store(n, Ordering::Relaxed);
        }
        if !add.is_empty() {
            self.subscribe(&add)?;
        }
        Ok(())
    }

    fn start_load(&mut self, channel: Arc<str>) {
        self.unsent.start(self.hub, self.redis, channel);
    }

    fn retry_unsent(&mut self) {
        self.unsent.retry(self.redis);
    }

    fn drain_messages(&mut self) -> Result<(), String> {
        let mut used = 0;
        loop {
            match resp::parse(&self.buf[used..], MAX_MESSAGE) {
                Ok(Some((value, n))) => {
                    used += n;
                    self.on_reply(value)?;
                }
                Ok(None) => break,
                Err(e) => return Err(format!("protocol: {}", e.0)),
            }
        }
        self.buf.drain(..used);
        if self.buf.capacity() > 4 * READ_CHUNK && self.buf.len() < READ_CHUNK {
            self.buf.shrink_to(READ_CHUNK);
        }
        Ok(())
    }

    fn on_reply(&mut self, value: Value) -> Result<(), String> {
        let items = match value {
            Value::Array(Some(items)) => items,
            Value::Error(e) => return Err(format!("Redis error: {e}")),
            // +OK of AUTH.
            _ => return Ok(()),
        };
        let kind = items.first().and_then(Value::bytes).unwrap_or_default();
        let name = items
            .get(1)
            .and_then(Value::bytes)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default();
        match kind {
            b"message" => {
                let payload = items.get(2).and_then(Value::bytes).unwrap_or_default();
                self.on_message(name, payload);
            }
            b"subscribe" if name != self.canary => {
                let Some(channel) = self.redis.names.channel_of(name) else {
                    return Ok(());
                };
                if let Some(c) = self.subscribed.get(channel).cloned() {
                    self.start_load(c);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_message(&mut self, name: &str, payload: &[u8]) {
        let now = self.clock.now_ms();
        let link = &self.redis.link;
        if name == self.canary {
            let sent = std::str::from_utf8(payload)
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(sent) = sent {
                let rtt = now.saturating_sub(sent);
                link.canary_rtt_ms.store(rtt, Ordering::Relaxed);
                self.canary_seen_ms = now;
                self.worked = true;
                if rtt <= self.redis.config.ready_within_ms {
                    link.canary_ok_ms.store(now.max(1), Ordering::Release);
                    if !link.pubsub_up.swap(true, Ordering::AcqRel) {
                        self.hub.set_link(true);
                        log::info!("Redis round trip works (canary {rtt} ms)");
                    }
                }
            }
            return;
        }
        receive(self.redis, self.hub, name, payload, now);
    }

    /// Bytes waiting in the socket plus bytes read but not handled.
    fn report_backlog(&self) {
        let mut pending: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the pointer we pass.
        let rc = unsafe { libc::ioctl(self.stream.as_raw_fd(), libc::FIONREAD, &mut pending) };
        let in_socket = if rc == 0 { pending.max(0) as u64 } else { 0 };
        let read = self.reader.queued.load(Ordering::Relaxed) + self.buf.len() as u64;
        self.redis
            .link
            .backlog_bytes
            .store(in_socket + read, Ordering::Relaxed);
    }

    /// A canary that stops coming back while the command side is up means
    /// this connection is stuck (say, Redis is paused): start over.
    fn check_canary(&mut self) -> Result<(), String> {
        let cfg = &self.redis.config;
        let silent = self.clock.now_ms().saturating_sub(self.canary_seen_ms);
        let limit = 2 * cfg.ready_within_ms;
        let command_up = self.redis.link.command_up.load(Ordering::Acquire);
        if silent > limit && command_up {
            return Err(format!("no canary for {silent} ms"));
        }
        if silent > cfg.ready_within_ms && self.redis.link.pubsub_up.load(Ordering::Acquire) {
            // Not ready until the round trip works again.
            self.redis.link.pubsub_up.store(false, Ordering::Release);
        }
        Ok(())
    }
}

/// What the reader thread hands over: bytes, or why the connection ended.
pub(super) type Chunk = Result<Vec<u8>, String>;

/// The reader thread and the queue it fills. Dropping it ends the thread
/// whatever it is blocked on, so a session's teardown cannot hang: not on
/// a read (the socket is shut down) and not on a full queue, which is
/// exactly where the reader sits when the node is behind (the receiver
/// goes first, so its send fails). The join then waits for a thread that
/// is already on its way out, and with it goes its handle on the socket.
pub(super) struct Reader {
    stream: Arc<TcpStream>,
    /// Chunks the reader thread took off the socket; `Err` ends the session.
    pub(super) chunks: Receiver<Chunk>,
    /// Bytes in `chunks`.
    pub(super) queued: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    pub(super) fn start(stream: Arc<TcpStream>) -> Result<Reader, String> {
        Self::start_with(stream, MAX_BACKLOG / READ_CHUNK)
    }

    /// With room for `chunks` chunks (Redis Cluster shares
    /// [`MAX_BACKLOG`] among its links).
    pub(super) fn start_with(stream: Arc<TcpStream>, chunks: usize) -> Result<Reader, String> {
        let (tx, chunks) = crossbeam_channel::bounded(chunks.max(1));
        let queued = Arc::new(AtomicU64::new(0));
        let (read_half, counter) = (stream.clone(), queued.clone());
        let thread = std::thread::Builder::new()
            .name("redix-redis-reader".into())
            .spawn(move || read_loop(read_half, tx, counter))
            .map_err(|e| format!("spawn the pub/sub reader: {e}"))?;
        Ok(Reader {
            stream,
            chunks,
            queued,
            thread: Some(thread),
        })
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Ends a blocking read: the reader gets EOF or an error.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        // Ends a blocking send: with no receiver left it fails at once.
        drop(std::mem::replace(
            &mut self.chunks,
            crossbeam_channel::never(),
        ));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The reader thread: socket to queue, nothing else. A full queue blocks
/// it (the bound on what waits here); EOF or an error ends the session,
/// and so does the queue's receiver going away.
fn read_loop(stream: Arc<TcpStream>, tx: Sender<Chunk>, queued: Arc<AtomicU64>) {
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let msg = match (&*stream).read(&mut chunk) {
            Ok(0) => Err("Redis closed the connection".to_string()),
            Ok(n) => {
                queued.fetch_add(n as u64, Ordering::Relaxed);
                Ok(chunk[..n].to_vec())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(format!("read: {e}")),
        };
        let end = msg.is_err();
        if tx.send(msg).is_err() || end {
            return;
        }
    }
}

/// A channel's announcement (`<stream id> <data>` on its pub/sub name)
/// handed to the hub; the figures the link reports counted on the way.
/// The one server's connection and the shard links both end here.
pub(super) fn receive(redis: &Redis, hub: &Hub, name: &str, payload: &[u8], now: u64) {
    let Some(channel) = redis.names.channel_of(name) else {
        return;
    };
    redis.link.received.fetch_add(1, Ordering::Relaxed);
    let Some(ev) = parse_payload(payload) else {
        log::warn!("pub/sub message on {name} is not \"<stream id> <data>\"; ignored");
        return;
    };
    let sent_ms = ev.id >> ids::SEQ_BITS;
    let lag = crate::link::wall_ms().saturating_sub(sent_ms);
    redis.link.lag_ms.store(lag, Ordering::Relaxed);
    hub.receive(channel, ev, now);
}

/// Reads `"<id> <data>"`; the id must be a stream id.
pub(super) fn parse_payload(payload: &[u8]) -> Option<RemoteEvent> {
    let text = std::str::from_utf8(payload).ok()?;
    let (id_text, data) = text.split_once(' ')?;
    Some(RemoteEvent {
        id: ids::parse_stream(id_text)?,
        id_text: id_text.to_string(),
        data: data.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        let ev = parse_payload(b"1732412345678-2 {\"a\":1}").unwrap();
        assert_eq!(ev.id_text, "1732412345678-2");
        assert_eq!(ev.id, ids::parse_stream("1732412345678-2").unwrap());
        assert_eq!(ev.data, "{\"a\":1}");
        assert!(parse_payload(b"nospace").is_none());
        assert!(parse_payload(b"x-1 {}").is_none());
        // Embedded mode's plain numbers are no stream ids.
        assert!(parse_payload(b"18446744073709551615 {}").is_none());
        assert!(parse_payload(b"42 {}").is_none());
    }

    #[test]
    fn dropping_a_reader_blocked_on_its_full_queue_ends_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        // Small writes: every read is a chunk, so the queue fills by count.
        std::thread::spawn(move || while peer.write_all(&[b'x'; 512]).is_ok() {});
        let reader = Reader::start(Arc::new(stream)).unwrap();
        let full = std::time::Instant::now();
        while !reader.chunks.is_full() {
            assert!(
                full.elapsed() < Duration::from_secs(20),
                "the queue never filled"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let (done, dropped) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            drop(reader);
            let _ = done.send(());
        });
        assert!(
            dropped.recv_timeout(Duration::from_secs(20)).is_ok(),
            "dropping the reader hung"
        );
    }
}
