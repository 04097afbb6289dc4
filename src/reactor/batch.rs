//! Batching for clients that ask for it (`?batch=1`, while
//! `batch.window_ms` > 0).
//!
//! - SSE: a stream's writes wait until its window closes (or
//!   `batch.max_events` are queued), so the events of a window leave in
//!   one write. The events themselves are the shared per-event bytes.
//! - WebSocket: per reactor and channel, the events of a window become one
//!   `{"type":"batch","events":[…]}` frame, built once (and compressed
//!   once per deflate window in use) and queued on every batching
//!   subscriber of the channel. A window's frame goes out early when it
//!   reaches `batch.max_events` or a quarter of `queue.max_bytes`, so it
//!   always fits a queue. A subscriber that
//!   joined in the middle of a window (its replay already holds the first
//!   events) gets the rest one by one instead.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::Bytes;

use super::timer::TimerKind;
use super::{Fanout, Worker};
use crate::conn::ConnState;
use crate::event::{DeflatedFrames, Event};
use crate::proto::deflate::WindowBits;
use crate::proto::ws;

/// The events of one channel collected in the open window.
#[derive(Default)]
pub(super) struct Pending {
    events: Vec<Arc<Event>>,
    /// Bytes of their JSON in a batch frame.
    bytes: usize,
}

/// One window's events of one channel, encoded once per wire variant.
struct BatchFrames {
    json: Vec<u8>,
    plain: Bytes,
    deflated: DeflatedFrames,
}

impl BatchFrames {
    fn new(events: &[Arc<Event>]) -> BatchFrames {
        let size: usize = events.iter().map(|e| e.json().len() + 1).sum();
        let mut json = Vec::with_capacity(size + 32);
        json.extend_from_slice(br#"{"type":"batch","events":["#);
        for (i, ev) in events.iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            json.extend_from_slice(ev.json());
        }
        json.extend_from_slice(b"]}");
        let plain = Bytes::from(ws::encode_frame(ws::OpCode::Text, &json, false));
        BatchFrames {
            json,
            plain,
            deflated: DeflatedFrames::default(),
        }
    }

    /// The batch frame for a client with `deflate`'s window (or none).
    fn frame(
        &self,
        deflate: Option<WindowBits>,
        min_bytes: usize,
        compressions: &AtomicU64,
    ) -> Bytes {
        match deflate {
            Some(window) if self.json.len() >= min_bytes => {
                self.deflated.frame(&self.json, window, compressions)
            }
            _ => self.plain.clone(),
        }
    }
}

impl Worker {
    /// Collects an event for the batching WebSocket subscribers of its channel.
    /// The window's frame goes out early once it holds `batch.max_events`
    /// or a quarter of `queue.max_bytes` (a frame bigger than a
    /// subscriber's queue could never be queued, fast reader or not).
    pub(super) fn add_to_batch(&mut self, ev: &Arc<Event>, now: u64) {
        let max = self.shared.config.batch.max_events;
        let max_bytes = self.shared.config.queue.max_bytes / 4;
        let pending = self.ws_batches.entry(ev.channel.clone()).or_default();
        pending.events.push(ev.clone());
        pending.bytes += ev.json().len() + 1;
        let full = pending.events.len() >= max || pending.bytes >= max_bytes;
        if self.batch_due.is_none() {
            self.batch_due = Some(now + self.shared.config.batch.window_ms);
        }
        if full {
            if let Some(pending) = self.ws_batches.remove(&ev.channel) {
                self.flush_ws_batch(&ev.channel, pending.events, now);
            }
        }
    }

    /// Sends every pending WebSocket batch once the window has closed.
    pub(super) fn flush_due_batches(&mut self, now: u64) {
        match self.batch_due {
            Some(due) if now >= due => {}
            _ => return,
        }
        self.batch_due = None;
        let pending = std::mem::take(&mut self.ws_batches);
        for (channel, pending) in pending {
            self.flush_ws_batch(&channel, pending.events, now);
        }
    }

    fn flush_ws_batch(&mut self, channel: &Arc<str>, events: Vec<Arc<Event>>, now: u64) {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return;
        };
        let (first_id, last_id) = (first.id, last.id);
        let Some(subs) = self.topics.get(channel) else {
            return;
        };
        let cfg = &self.shared.config;
        let (max_warnings, deflate_min) = (cfg.queue.slow_warnings, cfg.ws.deflate_min_bytes);
        let compressions = &self.shared.hub.stats.ws_compressions;
        let mut books = Fanout {
            dirty: &mut self.dirty,
            stats: &self.shared.stats[self.id],
            too_slow: Vec::new(),
        };
        let frames = BatchFrames::new(&events);
        for key in subs.iter() {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            let ConnState::Ws(ws) = &conn.state else {
                continue;
            };
            if !ws.batch {
                continue;
            }
            let deflate = ws.deflate();
            if conn.state.wants(first_id, channel) {
                let bytes = frames.frame(deflate, deflate_min, compressions);
                let outcome = conn.enqueue_event(bytes, last_id, self.limits, max_warnings);
                books.settle(outcome, key, conn);
                continue;
            }
            // Joined mid-window: only what its replay did not carry.
            for ev in &events {
                if !conn.state.wants(ev.id, channel) {
                    continue;
                }
                let bytes = ev.ws_frame(deflate, deflate_min, compressions);
                let outcome = conn.enqueue_event(bytes, ev.id, self.limits, max_warnings);
                if !books.settle(outcome, key, conn) {
                    break;
                }
            }
        }
        let too_slow = books.too_slow;
        self.disconnect_all_slow(too_slow, now);
    }

    /// For a batching SSE stream with events queued: whether its writes
    /// wait (a window is open, or opens now).
    pub(super) fn hold_sse(&mut self, key: usize, now: u64) -> bool {
        let window = self.shared.config.batch.window_ms;
        let max = self.shared.config.batch.max_events;
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let (gen, events) = (conn.gen, conn.queue.len_events());
        let ConnState::Sse(sse) = &mut conn.state else {
            return false;
        };
        if !sse.batch() || events == 0 || events >= max {
            sse.set_hold_until(None);
            return false;
        }
        match sse.hold_until() {
            None => {
                sse.set_hold_until(Some(now + window));
                self.timers
                    .schedule(now + window, key, gen, TimerKind::Batch);
                true
            }
            Some(until) if now < until => true,
            Some(_) => {
                sse.set_hold_until(None);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn a_batch_is_compressed_once_per_window_in_use() {
        let events: Vec<Arc<Event>> = (1..=20)
            .map(|id| Arc::new(Event::new(id, Arc::from("c"), r#"{"s":"AAPL","p":189.5}"#)))
            .collect();
        let frames = BatchFrames::new(&events);
        let count = AtomicU64::new(0);
        let bits = WindowBits::new;
        // (subscribers, window or none, compressions so far)
        let table = [
            (100, bits(10), 1),
            (100, bits(15), 2),
            (10, None, 2),
            (10, bits(8), 3),
        ];
        for (subscribers, window, total) in table {
            let got: Vec<Bytes> = (0..subscribers)
                .map(|_| frames.frame(window, 64, &count))
                .collect();
            assert!(got.iter().all(|f| f == &got[0]), "one frame for all");
            assert_eq!(got[0] == frames.plain, window.is_none(), "{window:?}");
            assert_eq!(count.load(Ordering::Relaxed), total, "{window:?}");
        }
    }
}
