//! The operator's view of client connections, as data: what an admin
//! request asks every reactor ([`Ask`]: end the connections a
//! [`Selector`] matches, or report the top connections by a [`Sort`] key)
//! and what each reactor answers ([`Answer`]), merged by [`Gathered`] on
//! the reactor that holds the operator's request.
//!
//! Pure like `proto`: no sockets, no clock (times are passed in), nothing
//! from `reactor/`. The mailbox carries these values between reactors.
//!
//! Bounds, so an admin request over 100k connections stays cheap: a
//! reactor's report carries at most [`MAX_TOP`] rows (chosen in one
//! O(connections) pass with a heap of that size) and at most
//! [`MAX_CHANNELS_SHOWN`] channel names per row; a disconnect ends at most
//! [`MAX_DISCONNECTS`] connections per reactor per request, and the answer
//! says how many more matched so the operator can ask again.

mod report;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::mailbox::ConnRef;
use crate::proto::sse;
use crate::proto::ws::MAX_CONTROL;

pub use report::{ConnRow, Gathered, Report, TopN, Totals};

/// Rows a report may ask for (`?top=`), per reactor and in the answer.
pub const MAX_TOP: usize = 1000;
/// Rows a report gives without `?top=`.
pub const DEFAULT_TOP: usize = 50;
/// Channel names listed per connection (the count is always exact).
pub const MAX_CHANNELS_SHOWN: usize = 16;
/// Connections one reactor ends per disconnect request. Each costs a few
/// µs (unsubscribe, queue the last frame); this keeps one request to tens
/// of ms of reactor time.
pub const MAX_DISCONNECTS: usize = 10_000;
/// Longest operator reason, in bytes.
pub const MAX_REASON_BYTES: usize = 200;
/// Largest reconnect hint, ms (10 minutes).
pub const MAX_RETRY_MS: u64 = 600_000;
/// WebSocket close code of an operator's disconnect (4000–4999 is the
/// application range of RFC 6455): the reason is JSON with `reason`,
/// `retry` (ms, when the operator gave a hint; the key redix's 1012 uses
/// too) and `lastEventId`.
pub const WS_CLOSE_OPERATOR: u16 = 4000;

/// Which connections a disconnect ends. Only streams (SSE and WebSocket)
/// are matched: a plain HTTP request ends on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Subscribers of this channel.
    Channel(Arc<str>),
    /// Connections from this client IP: the TCP peer, or the client a
    /// trusted proxy named (an IPv6 client by its /64, as the per-IP
    /// limits count it).
    Ip(IpAddr),
    /// Connections whose subscription token named this subject.
    Subject(Arc<str>),
    /// One connection, by the id `/debug/connections` shows.
    Conn(ConnRef),
}

/// An operator's disconnect: whom, why, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub selector: Selector,
    pub reason: Arc<str>,
    /// The reconnect hint, ms: SSE `retry:`, the WebSocket reason's `retry`.
    pub retry_ms: Option<u64>,
}

impl Disconnect {
    /// The last SSE event: `event: reconnect` with the hint, the reason,
    /// and `id:` the resume point (what `Last-Event-ID` should say).
    pub fn sse_last(&self, resume: Option<&str>) -> Vec<u8> {
        sse::operator_reconnect(self.retry_ms, resume, &self.reason)
    }

    /// The WebSocket close reason: compact JSON within the 123 bytes a
    /// close frame allows; the operator's reason is shortened to fit.
    pub fn ws_reason(&self, resume: Option<&str>) -> String {
        let render = |reason: &str| {
            let mut v = serde_json::json!({ "reason": reason });
            if let Some(ms) = self.retry_ms {
                v["retry"] = ms.into();
            }
            if let Some(id) = resume {
                v["lastEventId"] = id.into();
            }
            v.to_string()
        };
        let mut reason: &str = &self.reason;
        loop {
            let text = render(reason);
            if text.len() <= MAX_CONTROL - 2 || reason.is_empty() {
                return text;
            }
            let mut end = reason.len() - 1;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason = &reason[..end];
        }
    }
}

/// What `/debug/connections` ranks by (largest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Bytes queued for the client.
    Queue,
    /// Data events the connection lost to a full queue.
    Drops,
    /// Time since the connection was accepted.
    Age,
    /// Time since a byte last moved either way.
    Idle,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Sort> {
        match s {
            "queue" => Some(Sort::Queue),
            "drops" => Some(Sort::Drops),
            "age" => Some(Sort::Age),
            "idle" => Some(Sort::Idle),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sort::Queue => "queue",
            Sort::Drops => "drops",
            Sort::Age => "age",
            Sort::Idle => "idle",
        }
    }
}

/// A report request: the top `top` connections by `sort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportQuery {
    pub top: usize,
    pub sort: Sort,
}

/// What an admin request asks each reactor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    Disconnect(Disconnect),
    Report(ReportQuery),
    /// The `/debug/fds` report. Asked of no reactor: a short-lived thread
    /// takes the census (O(fds) reads of `/proc`, too slow for a reactor
    /// at 100k connections) and answers like one.
    Fds,
}

/// One reactor's answer to an [`Ask`].
#[derive(Debug)]
pub enum Answer {
    /// Connections ended, and how many more matched past
    /// [`MAX_DISCONNECTS`].
    Disconnected {
        done: u64,
        more: u64,
    },
    Report(Box<Report>),
    /// The `/debug/fds` report.
    Fds(serde_json::Value),
}

/// The id of a connection as the admin API shows it:
/// `<reactor>-<slot>-<generation>`; stable for the connection's life and
/// never given to another (the generation changes with each use of a slot).
pub struct ConnId(pub ConnRef);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.0.reactor, self.0.key, self.0.gen)
    }
}

impl ConnId {
    /// Reads an id that [`ConnId`] wrote; `None` for anything else.
    pub fn parse(s: &str) -> Option<ConnRef> {
        let mut parts = s.split('-');
        let reactor = parts.next()?.parse().ok()?;
        let key = parts.next()?.parse().ok()?;
        let gen = parts.next()?.parse().ok()?;
        match parts.next() {
            None => Some(ConnRef { reactor, key, gen }),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disconnect(reason: &str, retry_ms: Option<u64>) -> Disconnect {
        Disconnect {
            selector: Selector::Channel(Arc::from("c")),
            reason: Arc::from(reason),
            retry_ms,
        }
    }

    #[test]
    fn connection_ids_round_trip_and_reject_anything_else() {
        let c = ConnRef {
            reactor: 1,
            key: 42,
            gen: 7,
        };
        assert_eq!(ConnId(c).to_string(), "1-42-7");
        assert_eq!(ConnId::parse("1-42-7"), Some(c));
        for bad in [
            "",
            "1-42",
            "1-42-7-8",
            "a-1-2",
            "1--2",
            "-1-2-3",
            "1-2-99999999999",
        ] {
            assert_eq!(ConnId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_websocket_reason_is_json_that_fits_a_close_frame() {
        let d = disconnect("maintenance", Some(1500));
        let v: serde_json::Value = serde_json::from_str(&d.ws_reason(Some("17"))).unwrap();
        assert_eq!(v["reason"], "maintenance");
        assert_eq!(
            (v["retry"].as_u64(), v["lastEventId"].as_str()),
            (Some(1500), Some("17"))
        );
        let long = "é".repeat(MAX_REASON_BYTES / 2);
        let text = disconnect(&long, Some(MAX_RETRY_MS)).ws_reason(Some("1712345678901-123"));
        assert!(text.len() <= MAX_CONTROL - 2, "{} bytes", text.len());
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["reason"].as_str().unwrap().starts_with("éé"));
        let bare: serde_json::Value =
            serde_json::from_str(&disconnect("x", None).ws_reason(None)).unwrap();
        assert_eq!(bare, serde_json::json!({"reason": "x"}));
    }

    #[test]
    fn sort_keys() {
        for s in [Sort::Queue, Sort::Drops, Sort::Age, Sort::Idle] {
            assert_eq!(Sort::parse(s.name()), Some(s));
        }
        assert_eq!(Sort::parse("size"), None);
    }
}
