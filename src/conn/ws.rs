//! A WebSocket client's state: what every WebSocket keeps (boxed in
//! `ConnState`), and the parts allocated only while used.

use std::sync::Arc;

use super::{Authorized, Delivery, Stamp, Subs};
use crate::limits::Bucket;
use crate::proto::deflate::{Agreement, WindowBits};
use crate::proto::ws::Reassembler;

/// A WebSocket client (boxed in [`ConnState`]: SSE connections, the
/// majority, should not pay for its size). Pings go out every
/// `ws.ping_ms` counted from the connection's accept, so no ping time is
/// stored (the heartbeat timer's kind says whether a ping is due).
#[derive(Debug)]
pub struct Ws {
    /// Subscribed channels (at most `ws.max_subscriptions`, counting
    /// `waiting`).
    pub channels: Subs,
    pub delivery: Delivery,
    /// The receive side while a frame or message is coming in; `None`
    /// between messages (an idle client holds no receive state).
    pub rx: Option<Box<Receiving>>,
    /// The permessage-deflate agreement, when the client made one.
    pub agreement: Option<Agreement>,
    /// `/ws/echo`: echo messages instead of reading commands.
    pub echo: bool,
    /// The client asked for `{"type":"batch"}` frames.
    pub batch: bool,
    /// Last time any byte arrived from the client.
    pub last_seen: Stamp,
    /// Subscribe/unsubscribe commands (`ws.subscribes_per_sec`).
    pub commands: Bucket,
    /// Waiting subscriptions and a token; `None` when there are neither.
    pub extra: Option<Box<WsExtra>>,
}

/// The rarely used parts of a WebSocket.
#[derive(Debug, Default)]
pub struct WsExtra {
    /// Redis mode: subscriptions whose channel is loading, with their
    /// `since`; acknowledged once it has loaded.
    pub waiting: Vec<(Arc<str>, Option<u64>)>,
    /// Token mode: the token each subscribe is checked against.
    pub token: Option<Authorized>,
}

impl Ws {
    /// The rarely used parts, allocated on first use.
    pub fn extra_mut(&mut self) -> &mut WsExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Subscriptions whose channel is loading (Redis mode).
    pub fn waiting(&self) -> &[(Arc<str>, Option<u64>)] {
        self.extra.as_ref().map_or(&[], |x| &x.waiting)
    }

    /// Takes the waiting subscriptions, leaving none.
    pub fn take_waiting(&mut self) -> Vec<(Arc<str>, Option<u64>)> {
        self.extra
            .as_mut()
            .map(|x| std::mem::take(&mut x.waiting))
            .unwrap_or_default()
    }

    /// Token mode: the token each subscribe is checked against.
    pub fn token(&self) -> Option<&Authorized> {
        self.extra.as_ref().and_then(|x| x.token.as_ref())
    }

    pub fn token_mut(&mut self) -> Option<&mut Authorized> {
        self.extra.as_mut().and_then(|x| x.token.as_mut())
    }

    /// The window to compress this client's messages with, when it agreed
    /// to permessage-deflate.
    pub fn deflate(&self) -> Option<WindowBits> {
        self.agreement.map(|a| a.server_window())
    }

    /// The receive side, created when bytes arrive.
    pub fn receiving(&mut self, max_message: usize) -> &mut Receiving {
        let agreement = self.agreement;
        self.rx.get_or_insert_with(|| {
            Box::new(Receiving {
                rx: Reassembler::new(max_message, agreement),
                rbuf: Vec::new(),
                message_since_ms: 0,
            })
        })
    }

    /// When the message being received began; 0 between messages.
    pub fn message_since_ms(&self) -> u64 {
        self.rx.as_ref().map_or(0, |r| r.message_since_ms)
    }
}

/// A WebSocket's receive side while bytes of a frame or a message are in:
/// created when bytes arrive, dropped once a message is complete and no
/// byte is left over.
#[derive(Debug)]
pub struct Receiving {
    /// Frames in, messages out.
    pub rx: Reassembler,
    /// Received bytes not yet decoded: a partial frame header or control
    /// frame.
    pub rbuf: Vec<u8>,
    /// When the message being received began; 0 between messages.
    pub message_since_ms: u64,
}

impl Receiving {
    /// Nothing is partly received: the state can go.
    pub fn idle(&self) -> bool {
        !self.rx.in_message() && self.rbuf.is_empty()
    }
}
