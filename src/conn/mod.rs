//! One client connection: its socket, its state and its write queue.
//!
//! A connection is a request/response exchange until a request turns it
//! into a stream; any state can end in `Closing`, where the last queued
//! bytes drain, the write side is shut and the peer gets a short linger to
//! read them. State changes go through `mem::replace`, so a failed step
//! cannot leave a half-moved connection.

pub mod composite;
mod flags;
pub mod io;
pub mod queue;
mod stamp;
mod subs;
mod ws;

use std::net::{IpAddr, Shutdown};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::Bytes;
use mio::net::TcpStream;

use crate::event::Event;
use crate::limits::IpKey;
use crate::proto::gzip::{self, Trail};
use crate::tokens::Grant;
use composite::Composite;
pub use flags::{Flag, Flags};
use io::IoStatus;
use queue::{Flushed, Pushed, QueueLimits, WriteQueue};
pub use stamp::Stamp;
pub use subs::{Sub, Subs};
pub use ws::{Receiving, Ws, WsExtra};

/// Bytes buffered while a request is incomplete.
#[derive(Debug, Default)]
pub struct Request {
    pub buf: Vec<u8>,
    /// When the current request must be complete (ms since reactor start).
    pub deadline_ms: u64,
    /// Requests already answered on this connection.
    pub served: u32,
    /// Waiting for Redis (see `reactor::Parked`): no further request is
    /// read until the answer is queued.
    pub parked: bool,
    /// Reading stopped because answers piled up unread; it resumes once
    /// the queue drains below its cap.
    pub paused: bool,
    /// When the one live request timer fires; `None`: none is live.
    /// Keeps the timer wheel at one entry per connection however often
    /// the deadline moves.
    pub timer_at: Option<u64>,
}

/// What a subscriber connection (SSE or WebSocket) has been sent.
///
/// The three ids are stored without `Option` (8 B each instead of 16, in
/// every subscriber's slot): real event ids are never 0 (0 is the
/// "from the start" cursor), so 0 means "none" for the first two; the
/// gap point may itself be 0 (everything was lost from the start), so it
/// is stored plus one. Ids stay below `u64::MAX` (`hub::ids`), so the +1
/// cannot overflow.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Last data event queued; 0: none.
    last_queued: u64,
    /// Last data event completely written; 0: none.
    last_written: u64,
    /// Last event queued before the first drop, plus one: a resume point
    /// with no gap; 0: nothing dropped yet.
    before_gap_plus1: u64,
    /// The highest `Sub::live_from`: events above it are always wanted.
    pub live_from_max: u64,
    /// Data events this client lost to a full queue: the warnings, and
    /// `trades:*` events conflated away (replaced or refused), which
    /// never warn (for `/debug/connections`). Saturates (a `u32` keeps
    /// the struct at 40 B).
    pub drops: u32,
    /// Data events dropped because the queue was full: slow-consumer
    /// warnings, of which `queue.slow_warnings` end the connection.
    pub warnings: u32,
}

fn some_id(id: u64) -> Option<u64> {
    (id != 0).then_some(id)
}

impl Delivery {
    /// Last data event queued.
    pub fn last_queued(&self) -> Option<u64> {
        some_id(self.last_queued)
    }

    /// Last data event completely written.
    pub fn last_written(&self) -> Option<u64> {
        some_id(self.last_written)
    }

    /// Last event queued before the first drop: a resume point with no gap.
    pub fn before_gap(&self) -> Option<u64> {
        self.before_gap_plus1.checked_sub(1)
    }

    /// Records a data event queued.
    pub fn queued(&mut self, id: u64) {
        self.last_queued = id;
    }

    /// Records a data event completely written.
    pub fn written(&mut self, id: u64) {
        self.last_written = id;
    }

    /// Records a drop: the first one fixes the resume point with no gap.
    fn note_gap(&mut self, dropped: u64) {
        if self.before_gap_plus1 == 0 {
            let gap = self.last_queued().unwrap_or(dropped.saturating_sub(1));
            self.before_gap_plus1 = gap + 1;
        }
    }

    /// The id from which this client can resume without losing anything,
    /// when its stream ends after the frame now being written (`in_progress`).
    pub fn resume_id(&self, in_progress: Option<u64>) -> Option<u64> {
        let delivered = in_progress.max(self.last_written());
        match (self.before_gap(), delivered) {
            (Some(gap), Some(d)) => Some(gap.min(d)),
            (gap, d) => gap.or(d),
        }
    }
}

/// A stream opened with a subscription token: what the token allows,
/// and the one live timer that ends the stream when it expires.
#[derive(Debug)]
pub struct Authorized {
    pub grant: Box<Grant>,
    /// When the live expiry timer fires (reactor clock). A WebSocket
    /// refreshing to an earlier expiry arms another; a later one re-arms
    /// when this fires, so the wheel holds one entry per connection.
    pub timer_at: u64,
}

/// An SSE subscriber. Only what every stream uses is inline (the slot
/// of every connection is as large as its largest state); gzip, batching
/// and a token live in [`SseExtra`], allocated for streams that use one.
/// Its heartbeat is due whenever its heartbeat timer fires (the one
/// entry it keeps in the wheel), so no ping time is stored.
#[derive(Debug)]
pub struct Sse {
    pub channels: Subs,
    pub delivery: Delivery,
    extra: Option<Box<SseExtra>>,
}

/// The rarely used parts of an SSE stream.
#[derive(Debug, Default)]
pub struct SseExtra {
    /// Set for a gzip-encoded stream: what it has carried so far.
    gzip: Option<Trail>,
    /// The client asked for batching: writes wait for the batch window.
    batch: bool,
    /// Writes are held until then (a batch window is open).
    hold_until: Option<u64>,
    /// Token mode: the stream's token.
    token: Option<Authorized>,
    /// Redis Cluster mode, several channels: the composite cursor
    /// (`channels` are then in canonical order).
    composite: Option<Box<Composite>>,
}

impl Sse {
    pub fn new(channels: Subs, gzip: bool, batch: bool) -> Sse {
        let extra = (gzip || batch).then(|| {
            Box::new(SseExtra {
                gzip: gzip.then(Trail::default),
                batch,
                ..SseExtra::default()
            })
        });
        Sse {
            channels,
            delivery: Delivery::default(),
            extra,
        }
    }

    fn extra_mut(&mut self) -> &mut SseExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// A gzip-encoded stream.
    pub fn is_gzip(&self) -> bool {
        self.extra.as_ref().is_some_and(|x| x.gzip.is_some())
    }

    fn trail(&mut self) -> Option<&mut Trail> {
        self.extra.as_mut().and_then(|x| x.gzip.as_mut())
    }

    /// The client asked for batching.
    pub fn batch(&self) -> bool {
        self.extra.as_ref().is_some_and(|x| x.batch)
    }

    /// Until when writes are held (a batch window is open).
    pub fn hold_until(&self) -> Option<u64> {
        self.extra.as_ref().and_then(|x| x.hold_until)
    }

    pub fn set_hold_until(&mut self, until: Option<u64>) {
        if until.is_some() || self.extra.is_some() {
            self.extra_mut().hold_until = until;
        }
    }

    /// Token mode: the stream's token.
    pub fn token(&self) -> Option<&Authorized> {
        self.extra.as_ref().and_then(|x| x.token.as_ref())
    }

    pub fn token_mut(&mut self) -> Option<&mut Authorized> {
        self.extra.as_mut().and_then(|x| x.token.as_mut())
    }

    pub fn set_token(&mut self, token: Authorized) {
        self.extra_mut().token = Some(token);
    }

    /// A control chunk (retry, ping, reset) in this stream's encoding.
    pub fn control(&mut self, raw: &[u8]) -> Bytes {
        match self.trail() {
            None => Bytes::copy_from_slice(raw),
            Some(trail) => {
                trail.update(raw);
                Bytes::from(gzip::chunk(raw))
            }
        }
    }

    /// The stream's last chunk; a gzip stream ends with its trailer.
    pub fn last(&mut self, raw: &[u8]) -> Bytes {
        match self.trail() {
            None => Bytes::copy_from_slice(raw),
            Some(trail) => {
                trail.update(raw);
                let mut out = gzip::chunk(raw);
                out.extend_from_slice(&trail.finish());
                Bytes::from(out)
            }
        }
    }

    /// An event in this stream's encoding; the caller records it with
    /// [`Sse::sent`] once it is queued (or [`Sse::missed`] when dropped).
    /// A composite-cursor stream writes its own `id:` line (never gzip).
    pub fn event(&mut self, ev: &Event, gzip_compressions: &AtomicU64) -> Bytes {
        if let Some((composite, index)) = self.composite_of(&ev.channel) {
            return composite.event(index, ev.id, &ev.sse);
        }
        match self.is_gzip() {
            false => ev.sse.clone(),
            true => ev.sse_gzip(gzip_compressions),
        }
    }

    /// Counts a queued event into the gzip trailer or the composite cursor.
    pub fn sent(&mut self, ev: &Event) {
        if let Some((composite, index)) = self.composite_of(&ev.channel) {
            return composite.queued(index, ev.id);
        }
        if let Some(trail) = self.trail() {
            trail.update(&ev.sse);
        }
    }
}

/// Which per-IP limit a connection's slot belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    /// A plain HTTP connection, counted by peer IP from its accept.
    Http,
    Sse,
    Ws,
}

#[derive(Debug)]
pub enum ConnState {
    Request(Request),
    Sse(Sse),
    Ws(Box<Ws>),
    /// Draining the final bytes; `shut` once the write side is shut down.
    Closing {
        shut: bool,
    },
}

#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    pub gen: u32,
    pub peer: IpAddr,
    pub state: ConnState,
    pub queue: WriteQueue,
    pub flags: Flags,
    /// A per-IP slot this connection must give back.
    pub ip_slot: Option<(SlotKind, IpKey)>,
    /// When it was accepted.
    pub opened: Stamp,
    /// When a write last moved bytes.
    pub last_write: Stamp,
    /// When a request byte last arrived. WebSocket reads are in
    /// `Ws::last_seen`.
    pub last_read: Stamp,
}

/// What queueing one data event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// The queue was full: the event took the place of an older one of
    /// its channel.
    Conflated,
    Dropped,
    /// Dropped, and the connection has used up its warnings.
    TooSlow,
}

/// What a connection is doing, for the gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Request,
    Sse,
    Ws,
    Closing,
}

impl ConnState {
    pub fn phase(&self) -> Phase {
        match self {
            ConnState::Request(_) => Phase::Request,
            ConnState::Sse(_) => Phase::Sse,
            ConnState::Ws(_) => Phase::Ws,
            ConnState::Closing { .. } => Phase::Closing,
        }
    }

    /// Counts a queued event into a gzip stream's trailer or its
    /// composite cursor.
    pub fn sent(&mut self, ev: &Event) {
        if let ConnState::Sse(sse) = self {
            sse.sent(ev);
        }
    }

    /// The channels of a subscriber connection.
    pub fn subs(&self) -> &[Sub] {
        match self {
            ConnState::Sse(sse) => &sse.channels,
            ConnState::Ws(ws) => &ws.channels,
            ConnState::Request(_) | ConnState::Closing { .. } => &[],
        }
    }

    /// The subject of a stream's subscription token.
    /// The `sub` of the subscription token the stream holds (token mode);
    /// an operator may disconnect by it.
    pub fn subject(&self) -> Option<&Arc<str>> {
        match self {
            ConnState::Sse(sse) => sse.token().map(|t| &t.grant.sub),
            ConnState::Ws(ws) => ws.token().map(|t| &t.grant.sub),
            ConnState::Request(_) | ConnState::Closing { .. } => None,
        }
    }

    /// Delivery bookkeeping, for states that receive events.
    pub fn delivery(&self) -> Option<&Delivery> {
        match self {
            ConnState::Sse(sse) => Some(&sse.delivery),
            ConnState::Ws(ws) => Some(&ws.delivery),
            ConnState::Request(_) | ConnState::Closing { .. } => None,
        }
    }

    /// Whether a live event is for this connection: not one it already got
    /// by replay when it subscribed.
    pub fn wants(&self, id: u64, channel: &str) -> bool {
        let Some(d) = self.delivery() else {
            return false;
        };
        id > d.live_from_max
            || self
                .subs()
                .iter()
                .any(|s| &*s.channel == channel && id > s.live_from)
    }

    /// The subscription token of a stream opened with one.
    pub fn token_mut(&mut self) -> Option<&mut Authorized> {
        match self {
            ConnState::Sse(sse) => sse.token_mut(),
            ConnState::Ws(ws) => ws.token_mut(),
            ConnState::Request(_) | ConnState::Closing { .. } => None,
        }
    }

    /// Delivery bookkeeping, for states that receive events.
    pub fn delivery_mut(&mut self) -> Option<&mut Delivery> {
        match self {
            ConnState::Sse(sse) => Some(&mut sse.delivery),
            ConnState::Ws(ws) => Some(&mut ws.delivery),
            ConnState::Request(_) | ConnState::Closing { .. } => None,
        }
    }
}

impl Conn {
    pub fn new(stream: TcpStream, gen: u32, peer: IpAddr, now_ms: u64, deadline_ms: u64) -> Conn {
        Conn {
            stream,
            gen,
            peer,
            state: ConnState::Request(Request {
                deadline_ms,
                ..Request::default()
            }),
            queue: WriteQueue::default(),
            flags: Flags::default(),
            ip_slot: None,
            opened: Stamp::at(now_ms),
            last_write: Stamp::NEVER,
            last_read: Stamp::NEVER,
        }
    }

    /// Queues a data event for a subscriber, counting a warning on overflow.
    pub fn enqueue_event(
        &mut self,
        bytes: Bytes,
        id: u64,
        limits: QueueLimits,
        max_warnings: u32,
    ) -> Enqueued {
        let Some(d) = self.state.delivery_mut() else {
            return Enqueued::Dropped;
        };
        if self.queue.push_data(bytes, id, limits) {
            d.queued(id);
            return Enqueued::Queued;
        }
        d.note_gap(id);
        d.warnings += 1;
        d.drops = d.drops.saturating_add(1);
        match d.warnings >= max_warnings {
            true => Enqueued::TooSlow,
            false => Enqueued::Dropped,
        }
    }

    /// Queues an event of a conflated channel (`trades:*`): when the queue
    /// is full it replaces the newest queued event of the channel, or is
    /// dropped; never a slow-consumer warning (trades alone never end a
    /// connection).
    pub fn enqueue_conflated(
        &mut self,
        bytes: Bytes,
        id: u64,
        channel: &Arc<str>,
        limits: QueueLimits,
    ) -> Enqueued {
        let Some(d) = self.state.delivery_mut() else {
            return Enqueued::Dropped;
        };
        match self.queue.push_conflated(bytes, id, channel, limits) {
            Pushed::Queued => {
                d.queued(id);
                Enqueued::Queued
            }
            Pushed::Replaced => {
                d.queued(id);
                d.drops = d.drops.saturating_add(1);
                Enqueued::Conflated
            }
            Pushed::Full => {
                d.drops = d.drops.saturating_add(1);
                Enqueued::Dropped
            }
        }
    }

    /// Writes what the queue holds, up to about `budget` bytes.
    /// Writes `bytes` straight to the socket, bypassing the queue (the
    /// caller checked it is empty); how many were taken, 0 on any error
    /// (a real one is reported by the next flush of what gets queued).
    pub fn write_now(&mut self, bytes: &[u8]) -> usize {
        use std::io::Write as _;
        self.stream.write(bytes).unwrap_or(0)
    }

    pub fn flush(&mut self, budget: usize) -> Flushed {
        let done = self.queue.flush(&mut self.stream, budget);
        self.flags
            .set(Flag::Blocked, done.status == IoStatus::WouldBlock);
        if let (Some(d), Some(id)) = (self.state.delivery_mut(), done.last_id) {
            d.written(id);
        }
        done
    }

    /// Ends the connection gracefully: `last` goes out after what is queued
    /// (with `drop_pending`, instead of the data not yet started), then the
    /// write side is shut. Returns the state it left.
    pub fn start_closing(&mut self, last: Option<Bytes>, drop_pending: bool) -> ConnState {
        if drop_pending {
            self.queue.discard_pending_data();
        }
        if let Some(bytes) = last {
            self.queue.push_control(bytes);
        }
        std::mem::replace(&mut self.state, ConnState::Closing { shut: false })
    }

    /// In `Closing`, once the queue is empty: shut the write side (FIN after
    /// our last byte) and wait for the peer's FIN. True when shut now.
    pub fn shut_when_drained(&mut self) -> bool {
        match &mut self.state {
            ConnState::Closing { shut } if !*shut && self.queue.is_empty() => {
                *shut = true;
                // A peer that is already gone makes this fail; the read side
                // reports the close.
                let _ = self.stream.shutdown(Shutdown::Write);
                true
            }
            _ => false,
        }
    }
}
