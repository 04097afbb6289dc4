//! One client connection: its socket, its state and its write queue.
//!
//! A connection is a request/response exchange until a request turns it
//! into a stream; any state can end in `Closing`, where the last queued
//! bytes drain, the write side is shut and the peer gets a short linger to
//! read them. State changes go through `mem::replace`, so a failed step
//! cannot leave a half-moved connection.

pub mod io;
pub mod queue;

use std::net::{IpAddr, Shutdown};
use std::sync::Arc;

use bytes::Bytes;
use mio::net::TcpStream;

use crate::limits::IpKey;
use io::IoStatus;
use queue::{Flushed, QueueLimits, WriteQueue};

/// Bytes buffered while a request is incomplete.
#[derive(Debug, Default)]
pub struct Request {
    pub buf: Vec<u8>,
    /// When the current request must be complete (ms since reactor start).
    pub deadline_ms: u64,
    /// Requests already answered on this connection.
    pub served: u32,
}

/// An SSE subscriber.
#[derive(Debug)]
pub struct Sse {
    pub channels: Box<[Arc<str>]>,
    /// Last data event queued.
    pub last_queued: Option<u64>,
    /// Last data event completely written.
    pub last_written: Option<u64>,
    /// Last event queued before the first drop: a resume point with no gap.
    pub before_gap: Option<u64>,
    pub warnings: u32,
    pub next_ping_ms: u64,
}

impl Sse {
    /// The id from which this client can resume without losing anything,
    /// when its stream ends after the frame now being written (`in_progress`).
    pub fn resume_id(&self, in_progress: Option<u64>) -> Option<u64> {
        let delivered = in_progress.max(self.last_written);
        match (self.before_gap, delivered) {
            (Some(gap), Some(d)) => Some(gap.min(d)),
            (gap, d) => gap.or(d),
        }
    }
}

#[derive(Debug)]
pub enum ConnState {
    Request(Request),
    Sse(Sse),
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
    /// The last write would have blocked: wait for a writable event.
    pub blocked: bool,
    /// Queued in the reactor's flush list this turn.
    pub dirty: bool,
    /// A per-IP stream slot this connection must give back.
    pub ip_slot: Option<IpKey>,
    pub opened_ms: u64,
}

/// What queueing one data event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    Dropped,
    /// Dropped, and the connection has used up its warnings.
    TooSlow,
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
            blocked: false,
            dirty: false,
            ip_slot: None,
            opened_ms: now_ms,
        }
    }

    pub fn is_stream(&self) -> bool {
        matches!(self.state, ConnState::Sse(_))
    }

    /// Queues a data event for an SSE stream, counting a warning on overflow.
    pub fn enqueue_event(
        &mut self,
        bytes: Bytes,
        id: u64,
        limits: QueueLimits,
        max_warnings: u32,
    ) -> Enqueued {
        let ConnState::Sse(sse) = &mut self.state else {
            return Enqueued::Dropped;
        };
        if self.queue.push_data(bytes, id, limits) {
            sse.last_queued = Some(id);
            return Enqueued::Queued;
        }
        if sse.before_gap.is_none() {
            sse.before_gap = Some(sse.last_queued.unwrap_or(id.saturating_sub(1)));
        }
        sse.warnings += 1;
        match sse.warnings >= max_warnings {
            true => Enqueued::TooSlow,
            false => Enqueued::Dropped,
        }
    }

    /// Writes what the queue holds, unless the socket said it would block.
    pub fn flush(&mut self) -> Flushed {
        let done = self.queue.flush(&mut self.stream);
        self.blocked = done.status == IoStatus::WouldBlock;
        if let (ConnState::Sse(sse), Some(id)) = (&mut self.state, done.last_id) {
            sse.last_written = Some(id);
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
