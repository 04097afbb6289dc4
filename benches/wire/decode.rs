//! What the wire bench's clients read, decoded: SSE (plain or gzip) into event blocks, and
//! WebSocket messages (through `support::ws::Reader`, inflated when permessage-deflate
//! compressed them), with the ids and counts each client reports.

use flate2::{Decompress, FlushDecompress, Status};
use serde_json::Value;

use crate::support::http::find;
use crate::support::ws;
use crate::Res;

/// Inflates one permessage-deflate message (RFC 7692 §7.2.2: append 00 00 ff ff).
pub fn inflate_message(p: &[u8]) -> Res<Vec<u8>> {
    let mut input = p.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(p.len() * 4 + 256);
    loop {
        let before = (d.total_in(), d.total_out());
        out.reserve(out.capacity().max(1024));
        let space = out.capacity() - out.len();
        let st = d
            .decompress_vec(
                &input[d.total_in() as usize..],
                &mut out,
                FlushDecompress::Sync,
            )
            .map_err(|e| format!("inflate: {e}"))?;
        let produced = (d.total_out() - before.1) as usize;
        // Done once every input byte is in and the output had room to spare.
        if st == Status::StreamEnd || (d.total_in() as usize == input.len() && produced < space) {
            return Ok(out);
        }
        if (d.total_in(), d.total_out()) == before {
            return Err("inflate made no progress".into());
        }
    }
}

/// The gzip body of an SSE stream: a 10-byte header, then flushed deflate chunks.
pub struct GzIn {
    header: Vec<u8>,
    d: Decompress,
    ended: bool,
}

impl GzIn {
    pub fn new() -> GzIn {
        GzIn {
            header: Vec::new(),
            d: Decompress::new(false),
            ended: false,
        }
    }

    pub fn feed(&mut self, mut input: &[u8], text: &mut Vec<u8>) -> Res<()> {
        if self.header.len() < 10 {
            let take = (10 - self.header.len()).min(input.len());
            self.header.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.header.len() == 10 && self.header[..4] != [0x1f, 0x8b, 0x08, 0x00] {
                return Err(format!("not a plain gzip header: {:02x?}", self.header));
            }
        }
        while !self.ended {
            let before = (self.d.total_in(), self.d.total_out());
            text.reserve(1 << 16);
            let space = text.capacity() - text.len();
            let st = self
                .d
                .decompress_vec(input, text, FlushDecompress::Sync)
                .map_err(|e| format!("gunzip: {e}"))?;
            let used = (self.d.total_in() - before.0) as usize;
            let produced = (self.d.total_out() - before.1) as usize;
            input = &input[used..];
            if st == Status::StreamEnd {
                self.ended = true;
            }
            // Stop once every input byte is in and the output had room to spare.
            if input.is_empty() && produced < space
                || (self.d.total_in(), self.d.total_out()) == before
            {
                break;
            }
        }
        Ok(())
    }
}

/// What a scenario-1 client learnt from the body.
#[derive(Default)]
pub struct Decoded {
    pub ready: bool,
    pub ids: Vec<u64>,
    /// compressed WebSocket messages / all data-carrying WebSocket messages
    pub compressed: u64,
    pub messages: u64,
    pub batches: u64,
    /// SSE: each event block as text; WebSocket: each message JSON as text
    pub texts: Vec<Vec<u8>>,
    pub first_inflated: Option<String>,
    pub errors: Vec<String>,
}

impl Decoded {
    pub fn error(&mut self, e: String) {
        if self.errors.len() < 5 {
            self.errors.push(e);
        }
    }

    /// One `{"type":"message",...}` object; checks the channel.
    pub fn message(&mut self, v: &Value, channel: &str) {
        if v["channel"] != channel {
            self.error(format!("event on the wrong channel: {v}"));
        }
        match v["id"].as_str().and_then(|s| s.parse().ok()) {
            Some(id) => self.ids.push(id),
            None => self.error(format!("event without id: {v}")),
        }
    }
}

pub struct SseIn {
    pub gz: Option<GzIn>,
    pub text: Vec<u8>,
}

impl SseIn {
    pub fn feed(&mut self, bytes: &[u8], out: &mut Decoded, channel: &str) -> Res<()> {
        match &mut self.gz {
            Some(gz) => gz.feed(bytes, &mut self.text)?,
            None => self.text.extend_from_slice(bytes),
        }
        let mut start = 0;
        while let Some(i) = find(&self.text[start..], b"\n\n") {
            let block = self.text[start..start + i + 2].to_vec();
            start += i + 2;
            let s = String::from_utf8_lossy(&block);
            let (mut id, mut event, mut data) = (None, None, None);
            for line in s.lines() {
                if line.starts_with(':') {
                    continue;
                }
                let (k, v) = line.split_once(": ").unwrap_or((line, ""));
                match k {
                    "retry" => out.ready = true,
                    "id" => id = v.parse::<u64>().ok(),
                    "event" => event = Some(v.to_string()),
                    "data" => data = Some(v.to_string()),
                    _ => {}
                }
            }
            match event.as_deref() {
                Some("message") => {
                    let v: Value = serde_json::from_str(data.as_deref().unwrap_or(""))
                        .map_err(|e| format!("event data is not JSON: {e}"))?;
                    out.message(&v, channel);
                    if id != out.ids.last().copied() {
                        out.error(format!("id: line {id:?} differs from the data's id"));
                    }
                    out.messages += 1;
                    out.texts.push(block);
                }
                Some(other) => out.error(format!("unexpected event {other}: {s}")),
                None => {}
            }
        }
        self.text.drain(..start);
        Ok(())
    }
}

/// One whole message from the server (fragments joined, inflated if RSV1).
pub struct WsMsg {
    pub opcode: u8,
    pub compressed: bool,
    pub payload: Vec<u8>,
}

/// A WebSocket body: frames in, whole messages out.
pub struct WsIn {
    reader: ws::Reader,
}

impl WsIn {
    /// `deflate`: permessage-deflate was agreed.
    pub fn new(deflate: bool) -> WsIn {
        WsIn {
            reader: ws::Reader::new(deflate),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) -> Res<Vec<WsMsg>> {
        let mut out = Vec::new();
        self.reader.feed(bytes, &mut |m: ws::Msg<'_>| {
            let payload = if m.compressed {
                inflate_message(m.payload)?
            } else {
                m.payload.to_vec()
            };
            out.push(WsMsg {
                opcode: m.opcode,
                compressed: m.compressed,
                payload,
            });
            Ok(())
        })?;
        Ok(out)
    }
}
