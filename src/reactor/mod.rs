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
//! - Every connection leaves through `Worker::close` (`close.rs`), which
//!   deregisters, unsubscribes, gives back limits and frees the slot.
//!   Anything that names a connection from outside the current call
//!   carries its generation ([`ConnRef`], or `(key, gen)` inside).
//!
//! The files follow what happens to a connection: `accept` (admission),
//! `request` (read, parse, route, answer), `stream` (subscribe → resets →
//! replay → index, for SSE and WebSocket alike), `websocket` (frames and
//! the JSON protocol), `tokens` (a stream's subscription token: its
//! expiry, the channels it allows, a WebSocket's refresh), `parked`
//! (requests waiting for Redis), `admin` (operator requests answered by
//! every reactor), `deliver` (fan-out and flush), `batch`, `timeouts`,
//! `close`. Only this file is
//! shared among them; they never import each other.

mod accept;
mod admin;
mod batch;
mod close;
mod coalesce;
mod deliver;
mod drain;
mod footprint;
mod jobs;
mod parked;
mod request;
mod stream;
mod timeouts;
pub mod timer;
mod tokens;
mod topics;
mod websocket;

use std::collections::HashMap;

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use topics::Subscribers;

use bytes::Bytes;
use crossbeam_channel::Receiver;
use mio::event::Event as MioEvent;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::api::ws::reset_frame;
use crate::api::StreamStart;
use crate::conn::io::{discard, IoStatus};
use crate::conn::queue::QueueLimits;
use crate::conn::{Conn, ConnState, Enqueued, Flag, Phase, SlotKind};
use crate::event::Event;
use crate::limits::IpKey;
use crate::mailbox::{ConnRef, Mailbox, Msg};
use crate::metrics::WorkerStats;
use crate::proto::sse;
use crate::state::{Access, Shared};
use accept::AcceptState;
use timer::TimerWheel;

pub const LISTENER: Token = Token(usize::MAX - 1);
pub const WAKER: Token = Token(usize::MAX - 2);

/// Bytes read from one connection per turn; past it the connection is
/// read again next turn (edge-triggered: it is put on a list), so one
/// busy client cannot hold the reactor.
const READ_BUDGET: usize = 64 * 1024;
/// Inbox messages handled per turn.
const INBOX_BUDGET: usize = 4096;
/// Longest poll sleep, so a quiet reactor still notices shutdown promptly.
const MAX_POLL_MS: u64 = 1_000;
/// Timer wheel: 10 ms ticks, 4096 buckets (a turn of about 41 s).
const TIMER_TICK_MS: u64 = 10;
const TIMER_SLOTS: usize = 4096;

pub struct Worker {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    inbox: Receiver<Msg>,
    mailbox: Arc<Mailbox>,
    shared: Arc<Shared>,
    conns: Slab<Conn>,
    next_gen: u32,
    /// Channel → keys of local subscribers (one inline, more in a set).
    topics: HashMap<Arc<str>, Subscribers>,
    /// Connections with bytes queued this turn, as (key, gen).
    dirty: Vec<(usize, u32)>,
    /// Connections to read again next turn (their read budget ran out, or
    /// their unread answers drained), as (key, gen).
    read_later: Vec<(usize, u32)>,
    timers: TimerWheel,
    fired: Vec<timer::Entry>,
    epoch: Instant,
    accept: AcceptState,
    inbox_ready: bool,
    drain_deadline: Option<u64>,
    /// The paced drain's plan, from SIGTERM on.
    drain: Option<drain::Drain>,
    /// WebSocket batches being collected, per channel.
    ws_batches: HashMap<Arc<str>, batch::Pending>,
    /// When the open batch window closes.
    batch_due: Option<u64>,
    /// Reactor 0 sweeps the hub (expired history, idle channels) on this schedule.
    next_sweep_ms: Option<u64>,
    limits: QueueLimits,
    rng: u64,
    /// Requests waiting for Redis (a publish, channels loading), by key.
    parked: HashMap<usize, Parked>,
    /// Of those, admin requests waiting for the reactors' answers.
    admin_waits: usize,
    /// Holding stream writes under load.
    coalesce: coalesce::Coalesce,
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
    /// A job request the job engine is answering.
    Job(jobs::JobWait),
    /// An admin request the reactors are answering.
    Admin(admin::AdminWait),
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
            read_later: Vec::new(),
            timers: TimerWheel::new(TIMER_SLOTS, TIMER_TICK_MS),
            fired: Vec::new(),
            epoch: Instant::now(),
            accept: AcceptState::new(),
            inbox_ready: true,
            drain_deadline: None,
            drain: None,
            ws_batches: HashMap::new(),
            batch_due: None,
            next_sweep_ms: (id == 0).then_some(sweep_ms),
            limits,
            rng: seed | 1,
            parked: HashMap::new(),
            admin_waits: 0,
            coalesce: coalesce::Coalesce::default(),
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
        self.rng % max.saturating_add(1)
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
            let turn_start = self.now_ms();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept.ready = true,
                    WAKER => {
                        self.mailbox.woken();
                        self.inbox_ready = true;
                    }
                    Token(key) => self.on_socket_event(key, ev),
                }
            }
            let now = self.now_ms();
            if self.shared.is_shutting_down() && self.drain_deadline.is_none() {
                self.begin_shutdown(now);
            }
            self.read_deferred();
            if self.inbox_ready {
                self.drain_inbox();
            }
            self.accept_batch(now);
            self.pace_drain(now);
            self.run_timers(now);
            self.sweep_hub(now);
            self.flush_due_batches(now);
            self.flush_dirty(now);
            self.end_turn(turn_start, events.iter().count());
            if let Some(deadline) = self.drain_deadline {
                if self.conns.is_empty() || now >= deadline {
                    break;
                }
            }
        }
        self.close_all();
        log::debug!("reactor {} stopped", self.id);
    }

    /// After a turn: the heartbeat the watchdog reads, the timer gauge, and
    /// how long the turn took (slow turns are counted, the longest kept,
    /// and one of a second or more logged: every client of this reactor
    /// waited that long).
    fn end_turn(&mut self, start_ms: u64, socket_events: usize) {
        self.shared.health.turned(self.id, self.shared.now_ms());
        let now = self.now_ms();
        self.measure_rate(now);
        let stats = self.stats();
        stats
            .timer_entries
            .store(self.timers.len() as u64, Ordering::Relaxed);
        let took = now.saturating_sub(start_ms);
        if took < 10 {
            return;
        }
        stats.turn_max_ms.fetch_max(took, Ordering::Relaxed);
        WorkerStats::add(&stats.slow_turns_10ms, 1);
        if took >= 100 {
            WorkerStats::add(&stats.slow_turns_100ms, 1);
        }
        if took >= 1000 {
            WorkerStats::add(&stats.slow_turns_1s, 1);
            log::warn!(
                "reactor {}: one turn took {took} ms ({socket_events} socket events, {} connections open)",
                self.id,
                self.conns.len()
            );
        }
    }

    fn poll_timeout(&self, now: u64) -> u64 {
        let accept_now =
            self.accept.ready && self.accept.paused_until.is_none() && self.listener.is_some();
        let held = self.held_until(now);
        let work_left = (!self.dirty.is_empty() && held.is_none()) || !self.read_later.is_empty();
        if self.inbox_ready || accept_now || work_left {
            return 0;
        }
        let mut t = held.unwrap_or(MAX_POLL_MS);
        if let Some(ms) = self.timers.next_timeout_ms(now) {
            t = t.min(ms);
        }
        if let Some(at) = self.accept.paused_until {
            t = t.min(at.saturating_sub(now));
        }
        if let Some(ms) = self.drain_timeout() {
            t = t.min(ms);
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
                Ok(Msg::Retry { conn, channel }) => self.retry_parked(conn, &channel),
                Ok(Msg::Reset(channel)) => self.deliver_reset(&channel),
                Ok(Msg::ChannelError {
                    channel,
                    code,
                    message,
                }) => self.deliver_error(&channel, code, &message),
                Ok(Msg::PublishReply { conn, reply }) => {
                    self.publish_answered(conn.key, conn.gen, reply)
                }
                Ok(Msg::Job { conn, reply }) => self.job_answered(conn, reply),
                Ok(Msg::Admin { ask, reply }) => self.on_admin(&ask, reply),
                Ok(Msg::AdminAnswer { conn, answer }) => self.admin_answered(conn, answer),
                Err(_) => {
                    self.inbox_ready = false;
                    return;
                }
            }
        }
    }

    /// The name of connection `key` outside this call.
    fn conn_ref(&self, key: usize, gen: u32) -> ConnRef {
        ConnRef {
            reactor: self.id,
            key,
            gen,
        }
    }

    /// The gauge that counts connections in `phase`.
    fn gauge(&self, phase: Phase) -> &AtomicU64 {
        let stats = self.stats();
        match phase {
            Phase::Request => &stats.conns_http,
            Phase::Sse => &stats.conns_sse,
            Phase::Ws => &stats.conns_ws,
            Phase::Closing => &stats.conns_closing,
        }
    }

    /// Moves the gauges for a connection that went from `old` to `new`.
    fn moved(&self, old: Phase, new: Phase) {
        WorkerStats::sub(self.gauge(old), 1);
        WorkerStats::add(self.gauge(new), 1);
    }

    fn on_socket_event(&mut self, key: usize, ev: &MioEvent) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let parked = matches!(&conn.state, ConnState::Request(r) if r.parked);
        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
            conn.flags.set(Flag::Blocked, false);
            let gen = conn.gen;
            self.mark_dirty(key, gen);
        }
        // A parked request reads nothing until it is answered; a peer
        // that hangs up meanwhile is closed now, giving back what the
        // request holds, not when its wait runs out.
        if parked && (ev.is_read_closed() || ev.is_error()) {
            return self.close(key, Closed::Normal);
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.on_readable(key);
        }
    }

    /// Reads what the connection's state reads.
    fn on_readable(&mut self, key: usize) {
        let now = self.now_ms();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match &mut conn.state {
            ConnState::Request(_) => self.read_requests(key, now),
            ConnState::Ws(_) => self.read_ws(key, now),
            ConnState::Sse(_) | ConnState::Closing { .. } => {
                match discard(&mut conn.stream, READ_BUDGET) {
                    IoStatus::Closed => self.close(key, Closed::Normal),
                    IoStatus::Reset => self.close(key, Closed::PeerReset),
                    IoStatus::Error(_) => self.close(key, Closed::Error),
                    IoStatus::Progress(_) => self.read_again(key),
                    IoStatus::WouldBlock => {}
                }
            }
        }
    }

    /// Puts the connection on the list to read next turn (its read budget
    /// ran out, or reading was paused and may go on).
    fn read_again(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.flags.has(Flag::ReadQueued) {
            conn.flags.set(Flag::ReadQueued, true);
            self.read_later.push((key, conn.gen));
            WorkerStats::add(&self.shared.stats[self.id].reads_deferred, 1);
        }
    }

    /// Reads the connections put off from earlier turns, each with a
    /// fresh budget.
    fn read_deferred(&mut self) {
        if self.read_later.is_empty() {
            return;
        }
        let later = std::mem::take(&mut self.read_later);
        for &(key, gen) in &later {
            let Some(conn) = self.conns.get_mut(key).filter(|c| c.gen == gen) else {
                continue;
            };
            conn.flags.set(Flag::ReadQueued, false);
            self.on_readable(key);
        }
        // Keep the allocation for the next turn.
        let mut later = later;
        later.clear();
        if self.read_later.is_empty() {
            self.read_later = later;
        }
    }

    /// Puts the connection on this turn's flush list.
    fn mark_dirty(&mut self, key: usize, gen: u32) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.flags.has(Flag::Dirty) {
                conn.flags.set(Flag::Dirty, true);
                self.dirty.push((key, gen));
            }
        }
    }
}

/// What encoding an event for a subscriber needs: compression settings
/// and the counters of compressions (each event is compressed once per
/// wire variant: gzip, and each deflate window in use).
struct Encoding<'a> {
    deflate_min: usize,
    ws_compressions: &'a AtomicU64,
    gzip_compressions: &'a AtomicU64,
}

impl Encoding<'_> {
    fn of(shared: &Shared) -> Encoding<'_> {
        Encoding {
            deflate_min: shared.config.ws.deflate_min_bytes,
            ws_compressions: &shared.hub.stats.ws_compressions,
            gzip_compressions: &shared.hub.stats.sse_gzip_compressions,
        }
    }
}

/// An event in a subscriber's wire format (the shared bytes of the event
/// or of its compressed variant); `None` for a connection that takes no
/// events. The caller records it with `ConnState::sent` once queued.
fn event_bytes(state: &mut ConnState, ev: &Event, enc: &Encoding<'_>) -> Option<Bytes> {
    match state {
        ConnState::Ws(ws) => Some(ev.ws_frame(ws.deflate(), enc.deflate_min, enc.ws_compressions)),
        ConnState::Sse(sse) => Some(sse.event(ev, enc.gzip_compressions)),
        ConnState::Request(_) | ConnState::Closing { .. } => None,
    }
}

/// The reset of `channel` in a subscriber's wire format (`event: reset`
/// or `{"type":"reset"}`): its events were lost before they reached it.
fn reset_bytes(state: &mut ConnState, channel: &str) -> Option<Bytes> {
    match state {
        ConnState::Sse(sse) => Some(sse.control(&sse::reset(channel))),
        ConnState::Ws(_) => Some(reset_frame(channel)),
        ConnState::Request(_) | ConnState::Closing { .. } => None,
    }
}

/// Gives a per-IP slot back to its limiter.
fn release_slot(access: &Access, slot: Option<(SlotKind, IpKey)>) {
    match slot {
        Some((SlotKind::Http, ip)) => access.http.release(ip),
        Some((SlotKind::Sse, ip)) => access.sse.release(ip),
        Some((SlotKind::Ws, ip)) => access.ws.release(ip),
        None => {}
    }
}

/// The books of one fan-out pass: connections to flush, counters, and
/// who used up their slow-consumer warnings.
struct Fanout<'a> {
    dirty: &'a mut Vec<(usize, u32)>,
    stats: &'a WorkerStats,
    too_slow: Vec<usize>,
}

impl Fanout<'_> {
    /// Books what queueing one data event on `conn` did; true when queued.
    fn settle(&mut self, outcome: Enqueued, key: usize, conn: &mut Conn) -> bool {
        match outcome {
            Enqueued::Conflated => {
                WorkerStats::add(&self.stats.conflated, 1);
                true
            }
            Enqueued::Queued => {
                if !conn.flags.has(Flag::Dirty) {
                    conn.flags.set(Flag::Dirty, true);
                    self.dirty.push((key, conn.gen));
                }
                true
            }
            Enqueued::Dropped => {
                WorkerStats::add(&self.stats.dropped_queue_full, 1);
                false
            }
            Enqueued::TooSlow => {
                WorkerStats::add(&self.stats.dropped_queue_full, 1);
                self.too_slow.push(key);
                false
            }
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
