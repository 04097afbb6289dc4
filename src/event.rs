//! One published event, encoded once for every wire format it is sent in
//! (SSE, WebSocket, and on first need permessage-deflate, once per window
//! size in use, and gzip), so that fan-out queues the same shared bytes on
//! every subscriber.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::proto::deflate::{self, WindowBits};
use crate::proto::{gzip, ws};

/// One published event, encoded for every wire format it is sent in.
#[derive(Debug)]
pub struct Event {
    pub id: u64,
    pub channel: Arc<str>,
    /// A job's `done` or `error`: its stream ends after it.
    pub ends_job: bool,
    /// The complete SSE event (`id:`, `event:`, `data:`).
    pub sse: Bytes,
    /// The WebSocket text frame of the same JSON.
    pub ws: Bytes,
    /// Where the JSON starts in `ws` (after the frame header).
    ws_header_len: usize,
    /// The permessage-deflate frames, each made by the first subscriber
    /// with its window that needs it and shared by all the others.
    ws_deflated: DeflatedFrames,
    /// The SSE event as a flushed gzip chunk, made on first need.
    sse_gzip: OnceLock<Bytes>,
}

impl Event {
    /// Encodes the event once for every wire format; clients see `id` as
    /// a plain number.
    pub fn new(id: u64, channel: Arc<str>, data_json: &str) -> Event {
        Event::with_id_text(id, &id.to_string(), channel, data_json)
    }

    /// Encodes the event once for every wire format; clients see `id` as
    /// `id_text` (a Redis stream id in Redis mode).
    pub fn with_id_text(id: u64, id_text: &str, channel: Arc<str>, data_json: &str) -> Event {
        let json = message_json(id_text, &channel, data_json);
        let name = job_event_name(&channel, data_json);
        let (header, header_len) =
            ws::frame_header(ws::OpCode::Text, true, false, json.len() as u64);
        let mut frame = Vec::with_capacity(header_len + json.len());
        frame.extend_from_slice(&header[..header_len]);
        frame.extend_from_slice(json.as_bytes());
        Event {
            id,
            sse: Bytes::from(crate::proto::sse::event(
                id_text,
                name.unwrap_or("message"),
                &json,
            )),
            ends_job: matches!(name, Some("done" | "error")),
            ws: Bytes::from(frame),
            ws_header_len: header_len,
            ws_deflated: DeflatedFrames::default(),
            sse_gzip: OnceLock::new(),
            channel,
        }
    }

    /// The message JSON (the WebSocket frame's payload).
    pub fn json(&self) -> &[u8] {
        &self.ws[self.ws_header_len..]
    }

    /// The SSE event as a gzip chunk, compressed at most once per event.
    pub fn sse_gzip(&self, compressions: &AtomicU64) -> Bytes {
        self.sse_gzip
            .get_or_init(|| {
                compressions.fetch_add(1, Ordering::Relaxed);
                Bytes::from(gzip::chunk(&self.sse))
            })
            .clone()
    }

    /// The WebSocket frame for a client: compressed with its window when
    /// it agreed to permessage-deflate (`deflate` is `Some`) and the JSON is
    /// at least `min_bytes` long. Compression happens at most once per event
    /// and window; `compressions` counts it.
    pub fn ws_frame(
        &self,
        deflate: Option<WindowBits>,
        min_bytes: usize,
        compressions: &AtomicU64,
    ) -> Bytes {
        let json = &self.ws[self.ws_header_len..];
        match deflate {
            Some(window) if json.len() >= min_bytes => {
                self.ws_deflated.frame(json, window, compressions)
            }
            _ => self.ws.clone(),
        }
    }
}

/// One message's permessage-deflate text frames, one per compressor window
/// (see [`WindowBits::compressor_bits`]), each compressed on first need.
/// The 15-bit frame (every browser's) is inline; the narrower ones, which
/// few clients ask for, cost one pointer until one is needed.
#[derive(Debug, Default)]
pub struct DeflatedFrames {
    full: OnceLock<Bytes>,
    narrow: OnceLock<Box<[OnceLock<Bytes>; WindowBits::COMPRESSORS - 1]>>,
}

impl DeflatedFrames {
    /// The frame of `payload` compressed with `window`, compressing it
    /// (and counting that in `compressions`) only the first time.
    pub fn frame(&self, payload: &[u8], window: WindowBits, compressions: &AtomicU64) -> Bytes {
        let index = window.compressor_index();
        let slot = match self.narrow_slots(index) {
            Some(slot) => slot,
            None => &self.full,
        };
        slot.get_or_init(|| {
            compressions.fetch_add(1, Ordering::Relaxed);
            let packed = deflate::compress(payload, window);
            Bytes::from(ws::encode_frame(ws::OpCode::Text, &packed, true))
        })
        .clone()
    }

    /// The slot of a narrow window's compressor; `None` for 15 bits.
    fn narrow_slots(&self, index: usize) -> Option<&OnceLock<Bytes>> {
        if index + 1 >= WindowBits::COMPRESSORS {
            return None;
        }
        self.narrow.get_or_init(Default::default).get(index)
    }
}

/// The JSON every transport carries for a message:
/// `{"type":"message","channel":…,"id":"…","data":…}`.
pub fn message_json(id: &str, channel: &str, data_json: &str) -> String {
    // Channel names are checked to need no escaping.
    format!(r#"{{"type":"message","channel":"{channel}","id":"{id}","data":{data_json}}}"#)
}

/// Channels that carry a job's events: `job:<id>`.
pub const JOB_PREFIX: &str = "job:";

/// The SSE event name of a job event: its `type` (`token`, `done`,
/// `error`), on a job's channel; else none (`message`).
pub fn job_event_name(channel: &str, data_json: &str) -> Option<&'static str> {
    if !channel.starts_with(JOB_PREFIX) {
        return None;
    }
    // redix and its workers write the type first; parsing the whole
    // event is the fallback.
    const NAMES: [&str; 3] = ["token", "done", "error"];
    let lead = data_json.strip_prefix(r#"{"type":""#).unwrap_or("");
    if let Some(name) = NAMES
        .iter()
        .find(|n| lead.strip_prefix(**n).is_some_and(|r| r.starts_with('"')))
    {
        return Some(name);
    }
    let v: serde_json::Value = serde_json::from_str(data_json).ok()?;
    let kind = v.get("type")?.as_str()?;
    NAMES.into_iter().find(|n| *n == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_one_sse_event_with_the_envelope() {
        let ev = Event::new(9, Arc::from("c"), r#"{"k":"v"}"#);
        let json = r#"{"type":"message","channel":"c","id":"9","data":{"k":"v"}}"#;
        assert_eq!(&ev.ws[..2], &[0x81, json.len() as u8]);
        assert_eq!(&ev.ws[2..], json.as_bytes());
        assert_eq!(
            std::str::from_utf8(&ev.sse).unwrap(),
            format!("id: 9\nevent: message\ndata: {json}\n\n")
        );
    }

    #[test]
    fn the_deflated_frame_is_made_once_and_only_when_worth_it() {
        let big = format!("\"{}\"", "abc".repeat(200));
        let ev = Event::new(1, Arc::from("c"), &big);
        let count = AtomicU64::new(0);
        let full = Some(WindowBits::MAX);
        let a = ev.ws_frame(full, 256, &count);
        let b = ev.ws_frame(full, 256, &count);
        assert_eq!(count.load(Ordering::Relaxed), 1);
        assert_eq!(a, b);
        assert_eq!(a[0], 0xc1, "FIN + RSV1 + text");
        assert!(a.len() < ev.ws.len());
        assert!(ev.ws_deflated.narrow.get().is_none(), "no narrow slots yet");
        assert_eq!(ev.ws_frame(None, 256, &count), ev.ws);
        let small = Event::new(2, Arc::from("c"), "1");
        assert_eq!(small.ws_frame(full, 256, &count), small.ws);
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn one_compression_per_event_and_window_in_use() {
        let ev = Event::new(1, Arc::from("c"), &format!("\"{}\"", "abc".repeat(200)));
        let count = AtomicU64::new(0);
        let bits = |b| WindowBits::new(b);
        // Many subscribers with a 10-bit window: compressed once.
        let ten: Vec<Bytes> = (0..100).map(|_| ev.ws_frame(bits(10), 0, &count)).collect();
        assert_eq!(count.load(Ordering::Relaxed), 1);
        assert!(ten.iter().all(|f| f == &ten[0]));
        // One compression more for each other window; 8 and 9 are one.
        // (subscribers, window, compressions so far)
        let table = [
            (50, 15, 2),
            (50, 10, 2),
            (10, 9, 3),
            (10, 8, 3),
            (5, 12, 4),
            (5, 15, 4),
        ];
        for (subscribers, b, total) in table {
            for _ in 0..subscribers {
                let frame = ev.ws_frame(bits(b), 0, &count);
                assert_eq!(frame[0], 0xc1, "FIN + RSV1 + text");
            }
            assert_eq!(count.load(Ordering::Relaxed), total, "window {b}");
        }
        // The frames are the compressor's bytes for each window.
        let packed = deflate::compress(ev.json(), WindowBits::new(8).expect("valid"));
        let nine = ev.ws_frame(bits(9), 0, &count);
        assert!(nine.ends_with(&packed));
        assert_eq!(ev.ws_frame(bits(8), 0, &count), nine);
    }
}
