//! The one way into a reactor thread from any other thread: a bounded
//! channel of [`Msg`] plus a `mio::Waker`, and [`ConnRef`], the one name a
//! connection has outside its reactor.
//!
//! Invariants:
//! - Sending never blocks: a full inbox refuses the message (`send` is
//!   false) and the sender counts it. Nothing waits on a reactor.
//! - A [`ConnRef`] carries the slot's generation; the reactor drops a
//!   message whose connection is gone or whose slot was reused.
//! - This module knows messages, not what a reactor does with them: the
//!   hub and the bridges import it, never `reactor/`.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::{Poll, Token, Waker};

use crate::admin::{Answer, Ask};
use crate::event::Event;

/// Capacity of a reactor's inbox; a full inbox drops (and counts) events.
pub const INBOX_CAPACITY: usize = 65_536;

/// One connection, named from outside its reactor: which reactor, which
/// slab slot, which generation of that slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    pub reactor: usize,
    pub key: usize,
    pub gen: u32,
}

/// The Redis bridge's answer to a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishReply {
    Done {
        id: String,
        duplicate: bool,
    },
    /// Redis could not be reached or refused; the client gets a 503.
    Failed(String),
}

/// The job engine's answer to a request (see `jobs::Request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobReply {
    /// The summary: cached, or the job ended within the wait.
    Summary {
        url: String,
        summary: String,
        job_id: Option<String>,
        cached: bool,
    },
    /// Queued (or joined, for the same URL): the job's id.
    Accepted {
        job_id: String,
    },
    /// The job exists; `end` is its last event's id once it ended.
    Found {
        job_id: String,
        end: Option<u64>,
    },
    NotFound,
    /// The job ended with an error within the wait.
    Failed {
        job_id: String,
        code: String,
        message: String,
    },
    /// Not taken: the status, a code and why; `retry_after_s` for 503/429.
    Refused {
        status: u16,
        code: &'static str,
        message: String,
        retry_after_s: u64,
    },
}

/// Messages for a reactor thread.
#[derive(Debug)]
pub enum Msg {
    /// Queue this event on the local subscribers of its channel.
    Event(Arc<Event>),
    /// The connection waited for `channel` to load; it has (or cannot):
    /// try again.
    Retry { conn: ConnRef, channel: Arc<str> },
    /// Events of the channel were lost upstream: tell its subscribers.
    Reset(Arc<str>),
    /// Something went wrong upstream of the channel: tell its subscribers.
    ChannelError {
        channel: Arc<str>,
        code: &'static str,
        message: Arc<str>,
    },
    /// The answer to a publish the connection handed to the Redis bridge.
    PublishReply { conn: ConnRef, reply: PublishReply },
    /// The job engine's answer to a request the connection made.
    Job { conn: ConnRef, reply: JobReply },
    /// An operator's request to every reactor (the admin API): end the
    /// matching connections, or report the top ones; answer `reply`.
    Admin { ask: Arc<Ask>, reply: ConnRef },
    /// One reactor's answer to `Admin`, for the request `conn` holds.
    AdminAnswer { conn: ConnRef, answer: Answer },
}

/// Where the hub hands events for one reactor thread. Must not block;
/// false when the reactor's inbox is full.
pub trait Outbox: Send + Sync {
    /// Queues the event for the reactor.
    fn deliver(&self, event: Arc<Event>) -> bool;
    /// Tells the reactor that `conn` waited for `channel`, which is now
    /// ready (or will not be): it should try again.
    fn retry(&self, conn: ConnRef, channel: Arc<str>) -> bool;
    /// Events of `channel` were lost before this node could deliver them
    /// (Redis mode): its subscribers get a reset, in order with events.
    fn reset(&self, channel: Arc<str>) -> bool;
    /// Something went wrong upstream of `channel` (the market link).
    fn error(&self, channel: Arc<str>, code: &'static str, message: Arc<str>) -> bool;
}

/// The sending side of one reactor's inbox.
pub struct Mailbox {
    tx: Sender<Msg>,
    waker: Waker,
    /// A wake-up is on its way; further senders need not make another.
    pending: AtomicBool,
}

impl Mailbox {
    /// A mailbox whose waker wakes `poll` with `token`; the receiver is
    /// the reactor's inbox.
    pub fn new(poll: &Poll, token: Token) -> io::Result<(Arc<Mailbox>, Receiver<Msg>)> {
        let (tx, rx) = crossbeam_channel::bounded(INBOX_CAPACITY);
        let waker = Waker::new(poll.registry(), token)?;
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

    /// The reactor took the wake-up: the next message wakes it again.
    pub fn woken(&self) {
        self.pending.store(false, Ordering::Release);
    }

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

    fn retry(&self, conn: ConnRef, channel: Arc<str>) -> bool {
        self.send(Msg::Retry { conn, channel })
    }

    fn reset(&self, channel: Arc<str>) -> bool {
        self.send(Msg::Reset(channel))
    }

    fn error(&self, channel: Arc<str>, code: &'static str, message: Arc<str>) -> bool {
        self.send(Msg::ChannelError {
            channel,
            code,
            message,
        })
    }
}
