//! The hub: which reactor threads have subscribers of which channel, event
//! ids, and the one place an event is encoded.
//!
//! Invariants:
//! - Ids come from one counter under the hub lock, so they increase per
//!   channel and across channels; one id is therefore a cursor for every
//!   channel of a multi-channel stream.
//! - An event is encoded once, under the lock that gives it its id, and the
//!   same `Arc<Event>` is handed to every reactor with subscribers, in id
//!   order (the handoff happens under the lock too).
//! - The hub knows reactors, not connections: a reactor registers a channel
//!   when its first local subscriber arrives and drops it with the last, so
//!   the hub's map holds only channels somebody listens to.
//!
//! No sockets and no clock here: reactors are reached through [`Outbox`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;

use crate::proto::{deflate, ws};

/// Longest channel name.
pub const MAX_CHANNEL_LEN: usize = 128;

/// One published event, encoded for every wire format it is sent in.
#[derive(Debug)]
pub struct Event {
    pub id: u64,
    pub channel: Arc<str>,
    /// The complete SSE event (`id:`, `event:`, `data:`).
    pub sse: Bytes,
    /// The WebSocket text frame of the same JSON.
    pub ws: Bytes,
    /// Where the JSON starts in `ws` (after the frame header).
    ws_header_len: usize,
    /// The permessage-deflate frame, made by the first subscriber that
    /// needs it and shared by all the others.
    ws_deflated: OnceLock<Bytes>,
}

impl Event {
    /// Encodes the event once for every wire format.
    pub fn new(id: u64, channel: Arc<str>, data_json: &str) -> Event {
        let json = message_json(id, &channel, data_json);
        let (header, header_len) =
            ws::frame_header(ws::OpCode::Text, true, false, json.len() as u64);
        let mut frame = Vec::with_capacity(header_len + json.len());
        frame.extend_from_slice(&header[..header_len]);
        frame.extend_from_slice(json.as_bytes());
        Event {
            id,
            sse: Bytes::from(crate::proto::sse::event(id, "message", &json)),
            ws: Bytes::from(frame),
            ws_header_len: header_len,
            ws_deflated: OnceLock::new(),
            channel,
        }
    }

    /// The WebSocket frame for a client: compressed when it agreed to
    /// permessage-deflate and the JSON is at least `min_bytes` long.
    /// Compression happens at most once per event; `compressions` counts it.
    pub fn ws_frame(&self, deflate: bool, min_bytes: usize, compressions: &AtomicU64) -> Bytes {
        let json = &self.ws[self.ws_header_len..];
        if !deflate || json.len() < min_bytes {
            return self.ws.clone();
        }
        self.ws_deflated
            .get_or_init(|| {
                compressions.fetch_add(1, Ordering::Relaxed);
                let packed = deflate::compress(json);
                Bytes::from(ws::encode_frame(ws::OpCode::Text, &packed, true))
            })
            .clone()
    }
}

/// Where the hub hands events for one reactor thread. Must not block.
pub trait Outbox: Send + Sync {
    /// Queues the event for the reactor; false when its inbox is full.
    fn deliver(&self, event: Arc<Event>) -> bool;
}

/// Why a channel name was refused.
pub fn check_channel(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
        return Err(format!("channel names are 1 to {MAX_CHANNEL_LEN} bytes"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || "_-.:@/".contains(c);
    match name.chars().find(|c| !ok(*c)) {
        Some(c) => Err(format!(
            "channel name has a forbidden character {c:?}; use A-Z a-z 0-9 _ - . : @ /"
        )),
        None => Ok(()),
    }
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub id: u64,
    /// Reactor threads the event was handed to.
    pub reactors: usize,
    /// Reactor threads whose inbox was full (the event is lost for them).
    pub dropped: usize,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// Channel → bit per reactor thread with local subscribers.
    channels: HashMap<Arc<str>, u64>,
}

/// Counters read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct HubStats {
    pub published: AtomicU64,
    pub inbox_drops: AtomicU64,
    /// Events compressed for permessage-deflate subscribers (once each).
    pub ws_compressions: AtomicU64,
}

pub struct Hub {
    inner: Mutex<Inner>,
    outboxes: Vec<Arc<dyn Outbox>>,
    pub stats: HubStats,
}

/// Most reactor threads a hub serves (one bit each in a channel's mask).
pub const MAX_REACTORS: usize = 64;

impl Hub {
    /// `first_id` seeds the id counter; pass something that grows across
    /// restarts (the caller uses the wall clock in microseconds) so a client
    /// resuming after a restart never holds an id from the future.
    pub fn new(outboxes: Vec<Arc<dyn Outbox>>, first_id: u64) -> Hub {
        assert!(
            outboxes.len() <= MAX_REACTORS,
            "at most {MAX_REACTORS} reactors"
        );
        Hub {
            inner: Mutex::new(Inner {
                next_id: first_id.max(1),
                channels: HashMap::new(),
            }),
            outboxes,
            stats: HubStats::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain counters and bitmasks:
        // still consistent, so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reactor `reactor` now has local subscribers of `channel`.
    pub fn attach(&self, reactor: usize, channel: &Arc<str>) {
        let mut inner = self.lock();
        *inner.channels.entry(channel.clone()).or_insert(0) |= 1 << reactor;
    }

    /// Reactor `reactor` has no local subscribers of `channel` any more.
    pub fn detach(&self, reactor: usize, channel: &str) {
        let mut inner = self.lock();
        if let Some(mask) = inner.channels.get_mut(channel) {
            *mask &= !(1 << reactor);
            if *mask == 0 {
                inner.channels.remove(channel);
            }
        }
    }

    /// Channels with at least one subscriber somewhere.
    pub fn channel_count(&self) -> usize {
        self.lock().channels.len()
    }

    /// Gives the event an id, encodes it once and hands it to every reactor
    /// with subscribers. `data_json` must be compact JSON.
    pub fn publish(&self, channel: &str, data_json: &str) -> Published {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        let mut done = Published {
            id,
            reactors: 0,
            dropped: 0,
        };
        let Some((name, &mask)) = inner.channels.get_key_value(channel) else {
            return done;
        };
        let event = Arc::new(Event::new(id, name.clone(), data_json));
        for (i, outbox) in self.outboxes.iter().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            if outbox.deliver(event.clone()) {
                done.reactors += 1;
            } else {
                done.dropped += 1;
            }
        }
        drop(inner);
        if done.dropped > 0 {
            self.stats
                .inbox_drops
                .fetch_add(done.dropped as u64, Ordering::Relaxed);
        }
        done
    }
}

/// The JSON every transport carries for a message:
/// `{"type":"message","channel":…,"id":"…","data":…}`.
pub fn message_json(id: u64, channel: &str, data_json: &str) -> String {
    // Channel names are checked to need no escaping.
    format!(r#"{{"type":"message","channel":"{channel}","id":"{id}","data":{data_json}}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    #[derive(Default)]
    struct Recorder {
        got: StdMutex<Vec<u64>>,
        full: bool,
    }

    impl Outbox for Recorder {
        fn deliver(&self, event: Arc<Event>) -> bool {
            if self.full {
                return false;
            }
            self.got.lock().unwrap().push(event.id);
            true
        }
    }

    fn hub(n: usize) -> (Hub, Vec<Arc<Recorder>>) {
        let recs: Vec<Arc<Recorder>> = (0..n).map(|_| Arc::new(Recorder::default())).collect();
        let outs = recs.iter().map(|r| r.clone() as Arc<dyn Outbox>).collect();
        (Hub::new(outs, 100), recs)
    }

    #[test]
    fn events_reach_only_attached_reactors_in_id_order() {
        let (hub, recs) = hub(3);
        let ch: Arc<str> = Arc::from("news");
        hub.attach(0, &ch);
        hub.attach(2, &ch);
        let ids: Vec<u64> = (0..5).map(|_| hub.publish("news", "1").id).collect();
        assert_eq!(ids, vec![100, 101, 102, 103, 104]);
        assert_eq!(*recs[0].got.lock().unwrap(), ids);
        assert!(recs[1].got.lock().unwrap().is_empty());
        assert_eq!(*recs[2].got.lock().unwrap(), ids);
    }

    #[test]
    fn detach_of_last_reactor_forgets_the_channel() {
        let (hub, recs) = hub(2);
        let ch: Arc<str> = Arc::from("a");
        hub.attach(0, &ch);
        hub.attach(1, &ch);
        hub.detach(0, "a");
        assert_eq!(hub.channel_count(), 1);
        hub.detach(1, "a");
        assert_eq!(hub.channel_count(), 0);
        let p = hub.publish("a", "null");
        assert_eq!((p.reactors, p.dropped), (0, 0));
        assert!(recs[0].got.lock().unwrap().is_empty());
    }

    #[test]
    fn full_inbox_is_counted() {
        let full = Arc::new(Recorder {
            full: true,
            ..Recorder::default()
        });
        let hub = Hub::new(vec![full as Arc<dyn Outbox>], 1);
        hub.attach(0, &Arc::from("x"));
        let p = hub.publish("x", "1");
        assert_eq!(p.dropped, 1);
        assert_eq!(hub.stats.inbox_drops.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn encoding_is_one_sse_event_with_the_envelope() {
        let (hub, _) = hub(1);
        hub.attach(0, &Arc::from("c"));
        let ev = Event::new(9, Arc::from("c"), r#"{"k":"v"}"#);
        let json = r#"{"type":"message","channel":"c","id":"9","data":{"k":"v"}}"#;
        assert_eq!(&ev.ws[..2], &[0x81, json.len() as u8]);
        assert_eq!(&ev.ws[2..], json.as_bytes());
        assert_eq!(
            std::str::from_utf8(&ev.sse).unwrap(),
            "id: 9\nevent: message\ndata: {\"type\":\"message\",\"channel\":\"c\",\"id\":\"9\",\"data\":{\"k\":\"v\"}}\n\n"
        );
    }

    #[test]
    fn the_deflated_frame_is_made_once_and_only_when_worth_it() {
        let big = format!("\"{}\"", "abc".repeat(200));
        let ev = Event::new(1, Arc::from("c"), &big);
        let count = AtomicU64::new(0);
        let a = ev.ws_frame(true, 256, &count);
        let b = ev.ws_frame(true, 256, &count);
        assert_eq!(count.load(Ordering::Relaxed), 1);
        assert_eq!(a, b);
        assert_eq!(a[0], 0xc1, "FIN + RSV1 + text");
        assert!(a.len() < ev.ws.len());
        assert_eq!(ev.ws_frame(false, 256, &count), ev.ws);
        let small = Event::new(2, Arc::from("c"), "1");
        assert_eq!(small.ws_frame(true, 256, &count), small.ws);
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn channel_names() {
        assert!(check_channel("trades:AAPL").is_ok());
        assert!(check_channel("").is_err());
        assert!(check_channel("a\"b").is_err());
        assert!(check_channel(&"x".repeat(MAX_CHANNEL_LEN + 1)).is_err());
    }
}
