//! One published event, encoded once for every wire format it is sent in
//! (SSE, WebSocket, and on first need permessage-deflate and gzip), so
//! that fan-out queues the same shared bytes on every subscriber.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::proto::{deflate, gzip, ws};

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
        let (header, header_len) =
            ws::frame_header(ws::OpCode::Text, true, false, json.len() as u64);
        let mut frame = Vec::with_capacity(header_len + json.len());
        frame.extend_from_slice(&header[..header_len]);
        frame.extend_from_slice(json.as_bytes());
        Event {
            id,
            sse: Bytes::from(crate::proto::sse::event(id_text, "message", &json)),
            ws: Bytes::from(frame),
            ws_header_len: header_len,
            ws_deflated: OnceLock::new(),
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

/// The JSON every transport carries for a message:
/// `{"type":"message","channel":…,"id":"…","data":…}`.
pub fn message_json(id: &str, channel: &str, data_json: &str) -> String {
    // Channel names are checked to need no escaping.
    format!(r#"{{"type":"message","channel":"{channel}","id":"{id}","data":{data_json}}}"#)
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
}
