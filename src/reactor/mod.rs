//! One reactor thread: a mio `Poll`, its own `SO_REUSEPORT` listener, the
//! connections it accepted in a `Slab`, its local topic index and a timer
//! wheel.
//!
//! Invariants:
//! - Only this thread touches its sockets. Other threads reach it through
//!   its [`Mailbox`] (a bounded channel plus a `mio::Waker`).
//! - Sockets are registered once, edge-triggered, for read and write; the
//!   "would block" bit lives in user space (`Conn::blocked`), so queueing
//!   never re-registers.
//! - One turn does bounded work: an accept batch, an inbox budget, the due
//!   timers, then one flush of every connection that got bytes this turn
//!   (so a burst goes out in one vectored write).
//! - Every connection leaves through [`Worker::close`], which deregisters,
//!   unsubscribes, gives back limits and frees the slot. Anything that names
//!   a connection from outside the current call carries `(key, gen)`.

mod batch;
mod dispatch;
mod parked;
pub mod timer;
mod websocket;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::api::StreamStart;
use crate::bridge::Published;
use crate::conn::queue::QueueLimits;
use crate::conn::Conn;
use crate::hub::{Event, Outbox};
use crate::metrics::WorkerStats;
use crate::state::Shared;
use timer::{TimerKind, TimerWheel};

pub const LISTENER: Token = Token(usize::MAX - 1);
pub const WAKER: Token = Token(usize::MAX - 2);

/// Connections accepted per turn before other work gets a go.
const ACCEPT_BATCH: usize = 256;
/// Inbox messages handled per turn.
const INBOX_BUDGET: usize = 4096;
/// Capacity of a reactor's inbox; a full inbox drops (and counts) events.
pub const INBOX_CAPACITY: usize = 65_536;
/// Longest poll sleep, so a quiet reactor still notices shutdown promptly.
const MAX_POLL_MS: u64 = 1_000;
/// Timer wheel: 10 ms ticks, 4096 buckets (a turn of about 41 s).
const TIMER_TICK_MS: u64 = 10;
const TIMER_SLOTS: usize = 4096;
/// Backoff while accept fails for lack of file descriptors.
const EMFILE_BACKOFF_MIN_MS: u64 = 10;
const EMFILE_BACKOFF_MAX_MS: u64 = 1_000;
/// Re-check interval while the global connection cap holds accepts.
const CAP_RECHECK_MS: u64 = 50;

/// Messages for a reactor thread.
pub enum Msg {
    Event(Arc<Event>),
    /// Connection `(key, gen)` waited for channels to load: try again.
    Retry {
        key: usize,
        gen: u32,
    },
    /// Events of the channel were lost upstream: tell its subscribers.
    Reset(Arc<str>),
    /// The Redis bridge's answer to the publish of `(key, gen)`.
    Published {
        key: usize,
        gen: u32,
        outcome: Published,
    },
}

/// The way into one reactor thread from any other thread.
pub struct Mailbox {
    tx: Sender<Msg>,
    waker: Waker,
    /// A wake-up is on its way; further senders need not make another.
    pending: AtomicBool,
}

impl Mailbox {
    pub fn new(poll: &Poll) -> io::Result<(Arc<Mailbox>, Receiver<Msg>)> {
        let (tx, rx) = crossbeam_channel::bounded(INBOX_CAPACITY);
        let waker = Waker::new(poll.registry(), WAKER)?;
        let mailbox = Mailbox {
            tx,
            waker,
            pending: AtomicBool::new(false),
        };
        Ok((Arc::new(mailbox), rx))
    }

    /// Wakes the reactor unless a wake-up is already pending.
    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                log::error!("reactor wake-up failed: {e}");
            }
        }
    }
}

impl Mailbox {
    /// Queues a message and wakes the reactor; false when the inbox is full.
    pub fn send(&self, msg: Msg) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.wake();
                true
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

impl Outbox for Mailbox {
    fn deliver(&self, event: Arc<Event>) -> bool {
        self.send(Msg::Event(event))
    }

    fn retry(&self, key: usize, gen: u32) -> bool {
        self.send(Msg::Retry { key, gen })
    }

    fn reset(&self, channel: Arc<str>) -> bool {
        self.send(Msg::Reset(channel))
    }
}

/// Accepting: ready (the listener may have more), or paused until a time.
#[derive(Debug, Default)]
struct AcceptState {
    ready: bool,
    paused_until: Option<u64>,
    /// Paused because the global connection cap was reached (else: EMFILE).
    at_cap: bool,
    backoff_ms: u64,
}

pub struct Worker {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    inbox: Receiver<Msg>,
    mailbox: Arc<Mailbox>,
    shared: Arc<Shared>,
    conns: Slab<Conn>,
    next_gen: u32,
    /// Channel → keys of local subscribers.
    topics: HashMap<Arc<str>, HashSet<usize>>,
    /// Connections with bytes queued this turn, as (key, gen).
    dirty: Vec<(usize, u32)>,
    timers: TimerWheel,
    fired: Vec<timer::Entry>,
    epoch: Instant,
    accept: AcceptState,
    inbox_ready: bool,
    drain_deadline: Option<u64>,
    /// WebSocket batches being collected, per channel.
    ws_batches: HashMap<Arc<str>, Vec<Arc<Event>>>,
    /// When the open batch window closes.
    batch_due: Option<u64>,
    /// Reactor 0 sweeps the hub (expired history, idle channels) on this schedule.
    next_sweep_ms: Option<u64>,
    limits: QueueLimits,
    rng: u64,
    /// Requests waiting for Redis (a publish, channels loading), by key.
    parked: HashMap<usize, Parked>,
}

/// A request waiting for Redis; the connection reads no further requests
/// until it is answered.
pub struct Parked {
    gen: u32,
    what: Waiting,
}

pub enum Waiting {
    /// An SSE stream whose channels are loading.
    Stream(StreamStart),
    /// A publish the command thread is running.
    Publish { channel: String, keep_alive: bool },
}

impl Worker {
    pub fn new(
        id: usize,
        poll: Poll,
        mut listener: TcpListener,
        (mailbox, inbox): (Arc<Mailbox>, Receiver<Msg>),
        shared: Arc<Shared>,
        capacity: usize,
    ) -> io::Result<Worker> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let q = &shared.config.queue;
        let limits = QueueLimits {
            max_events: q.max_events,
            max_bytes: q.max_bytes,
        };
        let sweep_ms = shared.config.history.sweep_ms;
        let seed = Instant::now().elapsed().as_nanos() as u64
            ^ ((id as u64 + 1) << 40)
            ^ u64::from(std::process::id());
        Ok(Worker {
            id,
            poll,
            listener: Some(listener),
            inbox,
            mailbox,
            shared,
            conns: Slab::with_capacity(capacity),
            next_gen: 0,
            topics: HashMap::new(),
            dirty: Vec::new(),
            timers: TimerWheel::new(TIMER_SLOTS, TIMER_TICK_MS),
            fired: Vec::new(),
            epoch: Instant::now(),
            accept: AcceptState {
                ready: true,
                backoff_ms: EMFILE_BACKOFF_MIN_MS,
                ..AcceptState::default()
            },
            inbox_ready: true,
            drain_deadline: None,
            ws_batches: HashMap::new(),
            batch_due: None,
            next_sweep_ms: (id == 0).then_some(sweep_ms),
            limits,
            rng: seed | 1,
            parked: HashMap::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn stats(&self) -> &WorkerStats {
        &self.shared.stats[self.id]
    }

    /// A pseudo-random number in `0..=max` (xorshift; jitter only).
    fn jitter(&mut self, max: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % (max + 1)
    }

    /// Runs until shutdown has drained every connection.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout(self.now_ms());
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(Duration::from_millis(timeout)))
            {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!(
                    "reactor {}: poll failed: {e}; stopping this reactor",
                    self.id
                );
                break;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept.ready = true,
                    WAKER => {
                        self.mailbox.pending.store(false, Ordering::Release);
                        self.inbox_ready = true;
                    }
                    Token(key) => self.on_socket_event(key, ev),
                }
            }
            let now = self.now_ms();
            if self.shared.is_shutting_down() && self.drain_deadline.is_none() {
                self.begin_shutdown(now);
            }
            if self.inbox_ready {
                self.drain_inbox();
            }
            self.accept_batch(now);
            self.run_timers(now);
            self.sweep_hub(now);
            self.flush_due_batches(now);
            self.flush_dirty(now);
            self.shared.last_turn_ms[self.id].store(self.shared.now_ms(), Ordering::Relaxed);
            if let Some(deadline) = self.drain_deadline {
                if self.conns.is_empty() || now >= deadline {
                    break;
                }
            }
        }
        self.close_all();
        log::debug!("reactor {} stopped", self.id);
    }

    fn poll_timeout(&self, now: u64) -> u64 {
        let accept_now =
            self.accept.ready && self.accept.paused_until.is_none() && self.listener.is_some();
        if self.inbox_ready || accept_now || !self.dirty.is_empty() {
            return 0;
        }
        let mut t = MAX_POLL_MS;
        if let Some(ms) = self.timers.next_timeout_ms(now) {
            t = t.min(ms);
        }
        if let Some(at) = self.accept.paused_until {
            t = t.min(at.saturating_sub(now));
        }
        for at in [self.drain_deadline, self.next_sweep_ms, self.batch_due]
            .into_iter()
            .flatten()
        {
            t = t.min(at.saturating_sub(now));
        }
        t
    }

    fn sweep_hub(&mut self, now: u64) {
        let Some(at) = self.next_sweep_ms else { return };
        if now < at {
            return;
        }
        let removed = self.shared.hub.sweep(self.shared.now_ms());
        let figures = self.shared.hub.figures();
        log::debug!(
            "hub sweep: {removed} channels removed; {} channels, {} events ({} bytes) in history",
            figures.channels,
            figures.history_events,
            figures.history_bytes
        );
        self.next_sweep_ms = Some(now + self.shared.config.history.sweep_ms);
    }

    fn drain_inbox(&mut self) {
        for _ in 0..INBOX_BUDGET {
            match self.inbox.try_recv() {
                Ok(Msg::Event(ev)) => self.deliver(&ev),
                Ok(Msg::Retry { key, gen }) => self.retry_parked(key, gen),
                Ok(Msg::Reset(channel)) => self.deliver_reset(&channel),
                Ok(Msg::Published { key, gen, outcome }) => self.published(key, gen, outcome),
                Err(_) => {
                    self.inbox_ready = false;
                    return;
                }
            }
        }
    }

    fn accept_batch(&mut self, now: u64) {
        if let Some(until) = self.accept.paused_until {
            if now < until {
                return;
            }
            let resume_below = self.shared.max_conns / 10 * 9;
            if self.accept.at_cap && self.shared.open_conns.load(Ordering::Relaxed) > resume_below {
                self.accept.paused_until = Some(now + CAP_RECHECK_MS);
                return;
            }
            self.accept.paused_until = None;
            self.accept.ready = true;
        }
        if !self.accept.ready {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            if self.shared.open_conns.load(Ordering::Relaxed) >= self.shared.max_conns {
                self.pause_accept(now, true);
                return;
            }
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => {
                    self.accept.backoff_ms = EMFILE_BACKOFF_MIN_MS;
                    self.admit(stream, addr, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept.ready = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                    WorkerStats::add(&self.stats().accept_errors, 1);
                    log::warn!(
                        "reactor {}: accept: {e}; pausing accepts for {} ms (open connections {})",
                        self.id,
                        self.accept.backoff_ms,
                        self.shared.open_conns.load(Ordering::Relaxed)
                    );
                    self.pause_accept(now, false);
                    return;
                }
                Err(e) => {
                    WorkerStats::add(&self.stats().accept_errors, 1);
                    log::debug!("reactor {}: accept: {e}", self.id);
                }
            }
        }
    }

    fn pause_accept(&mut self, now: u64, at_cap: bool) {
        WorkerStats::add(&self.stats().accept_pauses, 1);
        let wait = if at_cap {
            if !self.accept.at_cap || self.accept.paused_until.is_none() {
                log::warn!(
                    "reactor {}: connection cap {} reached; accepts resume below 90%",
                    self.id,
                    self.shared.max_conns
                );
            }
            CAP_RECHECK_MS
        } else {
            let wait = self.accept.backoff_ms;
            self.accept.backoff_ms = (wait * 2).min(EMFILE_BACKOFF_MAX_MS);
            wait
        };
        self.accept.at_cap = at_cap;
        self.accept.paused_until = Some(now + wait);
    }

    fn admit(&mut self, mut stream: TcpStream, addr: SocketAddr, now: u64) {
        let tcp = &self.shared.config.tcp;
        if tcp.nodelay {
            let _ = stream.set_nodelay(true);
        }
        if tcp.send_buffer > 0 {
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(tcp.send_buffer);
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("reactor {}: register {addr}: {e}", self.id);
            return;
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let deadline = now + self.shared.config.limits.header_timeout_ms;
        entry.insert(Conn::new(stream, gen, addr.ip(), now, deadline));
        self.shared.open_conns.fetch_add(1, Ordering::Relaxed);
        let stats = self.stats();
        WorkerStats::add(&stats.accepted, 1);
        WorkerStats::add(&stats.conns_http, 1);
        self.timers.schedule(deadline, key, gen, TimerKind::Request);
    }

    fn begin_shutdown(&mut self, now: u64) {
        let drain = self.shared.config.shutdown.drain_ms;
        self.drain_deadline = Some(now + drain);
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        log::info!(
            "reactor {}: draining {} connections within {drain} ms",
            self.id,
            keys.len()
        );
        for key in keys {
            self.shutdown_conn(key, now);
        }
    }

    fn close_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key, Closed::Shutdown);
        }
    }
}

/// Why a connection closed (for counters and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The peer closed, or we finished a graceful close.
    Normal,
    /// Reset or broken pipe.
    PeerReset,
    /// Another socket error.
    Error,
    /// A deadline passed.
    Timeout,
    /// The drain window ended.
    Shutdown,
}
