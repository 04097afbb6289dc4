//! Frames in, whole messages out: reassembly of fragmented messages,
//! control frames between fragments, text validated as it arrives, and
//! permessage-deflate inflation.

use std::mem;

use super::{control_message, parse_header, unmask, FrameHeader, Message, OpCode, WsError};
use crate::proto::deflate::{self, Agreement, InflateError};

/// Per-connection receive state: frames in, whole messages out.
///
/// Drive it with [`decode`](Self::decode) on the read buffer (frames may be
/// split anywhere), or frame by frame with [`push`](Self::push). After an
/// error or a `Close` message, stop feeding it. Idle it is a few dozen
/// bytes and owns no heap memory: compressed messages are inflated whole,
/// each by its own inflater (the client keeps no deflate context).
#[derive(Debug)]
pub struct Reassembler {
    /// The data message so far (compressed bytes when `compressed`).
    pub(super) buf: Vec<u8>,
    max_message: usize,
    /// Payload bytes of the current data frame not yet seen.
    remaining: u64,
    /// `buf[..utf8_checked]` is whole, valid UTF-8; the rest is at most an
    /// incomplete 3-byte sequence.
    utf8_checked: usize,
    deflate: Option<Agreement>,
    mask: [u8; 4],
    /// Position of the next payload byte within its frame, mod 4.
    mask_phase: u8,
    kind: Option<Kind>,
    compressed: bool,
    fin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Binary,
}

/// `(bytes consumed, finished message)`; `(0, None)` means read more.
pub type Decoded = (usize, Option<Message>);

impl Reassembler {
    /// `max_message`: largest message after inflating, in bytes (over it: 1009).
    pub fn new(max_message: usize, deflate: Option<Agreement>) -> Self {
        Reassembler {
            buf: Vec::new(),
            max_message,
            remaining: 0,
            utf8_checked: 0,
            deflate,
            mask: [0; 4],
            mask_phase: 0,
            kind: None,
            compressed: false,
            fin: false,
        }
    }

    /// Largest frame payload to accept: compressed data may be slightly
    /// larger than what it inflates to (deflate's worst case is a few
    /// bytes per 16 KiB).
    pub fn max_frame(&self) -> u64 {
        let max = self.max_message as u64;
        match self.deflate {
            Some(_) => max + max / 1024 + 64,
            None => max,
        }
    }

    /// The permessage-deflate agreement: whether to queue the compressed
    /// variant of an event (RSV1 frames) for this connection.
    pub fn deflate(&self) -> Option<Agreement> {
        self.deflate
    }

    /// A message is partly received (for idle accounting and timeouts).
    pub fn in_message(&self) -> bool {
        self.kind.is_some() || self.remaining > 0
    }

    /// Consumes bytes from the start of `buf` (unmasking them in place) and
    /// returns how many, plus a message when one completed. Call again on
    /// the rest while it consumes something. A control frame is waited for
    /// whole (≤ 139 bytes); data payload is taken as it arrives.
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<Decoded, WsError> {
        if self.remaining > 0 {
            return self.take_payload(buf);
        }
        let deflate = self.deflate.is_some();
        let Some((h, hl)) = parse_header(buf, self.max_frame(), deflate)? else {
            return Ok((0, None));
        };
        if h.opcode.is_control() {
            // The header check bounds len to 125.
            let end = hl + h.len as usize;
            let Some(payload) = buf.get_mut(hl..end) else {
                return Ok((0, None));
            };
            unmask(payload, h.mask, 0);
            return Ok((end, Some(control_message(h.opcode, payload)?)));
        }
        self.begin_data(&h)?;
        if h.len == 0 {
            return Ok((hl, self.end_frame()?));
        }
        let (n, msg) = self.take_payload(&mut buf[hl..])?;
        Ok((hl + n, msg))
    }

    /// Feeds one whole frame whose payload is already unmasked.
    pub fn push(&mut self, h: &FrameHeader, payload: &[u8]) -> Result<Option<Message>, WsError> {
        debug_assert_eq!(payload.len() as u64, h.len, "push takes whole frames");
        if h.opcode.is_control() {
            return control_message(h.opcode, payload).map(Some);
        }
        self.begin_data(h)?;
        self.append(payload)?;
        self.remaining = 0;
        self.end_frame()
    }

    /// Checks a data frame against the message in progress.
    fn begin_data(&mut self, h: &FrameHeader) -> Result<(), WsError> {
        match (h.opcode, self.kind) {
            (OpCode::Continuation, None) => {
                return Err(WsError::protocol("continuation frame without a message"))
            }
            (OpCode::Continuation, Some(_)) => {}
            (_, Some(_)) => return Err(WsError::protocol("new message inside a fragmented one")),
            (op, None) => {
                self.kind = Some(if op == OpCode::Text {
                    Kind::Text
                } else {
                    Kind::Binary
                });
                self.compressed = h.rsv1;
                self.utf8_checked = 0;
            }
        }
        let cap = if self.compressed {
            self.max_frame()
        } else {
            self.max_message as u64
        };
        if self.buf.len() as u64 + h.len > cap {
            return Err(WsError::too_big("message over the limit"));
        }
        self.remaining = h.len;
        self.mask = h.mask;
        self.mask_phase = 0;
        self.fin = h.fin;
        Ok(())
    }

    /// Takes the current data frame's payload bytes from `buf`.
    fn take_payload(&mut self, buf: &mut [u8]) -> Result<Decoded, WsError> {
        let n = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let chunk = &mut buf[..n];
        unmask(chunk, self.mask, usize::from(self.mask_phase));
        self.mask_phase = ((usize::from(self.mask_phase) + n) % 4) as u8;
        self.remaining -= n as u64;
        self.append(chunk)?;
        let msg = if self.remaining == 0 {
            self.end_frame()?
        } else {
            None
        };
        Ok((n, msg))
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), WsError> {
        self.buf.extend_from_slice(bytes);
        if self.kind == Some(Kind::Text) && !self.compressed {
            self.check_utf8(false)?;
        }
        Ok(())
    }

    /// Validates the bytes added since the last check, failing at the first
    /// sequence that no later byte can complete.
    fn check_utf8(&mut self, at_end: bool) -> Result<(), WsError> {
        match std::str::from_utf8(&self.buf[self.utf8_checked..]) {
            Ok(_) => self.utf8_checked = self.buf.len(),
            Err(e) if e.error_len().is_none() && !at_end => self.utf8_checked += e.valid_up_to(),
            Err(_) => return Err(WsError::invalid("text is not UTF-8")),
        }
        Ok(())
    }

    /// After a data frame's last byte: the message when it was the last frame.
    fn end_frame(&mut self) -> Result<Option<Message>, WsError> {
        if !self.fin {
            return Ok(None);
        }
        let kind = self.kind.take();
        if kind == Some(Kind::Text) && !self.compressed {
            self.check_utf8(true)?;
        }
        let mut data = mem::take(&mut self.buf);
        if self.compressed {
            data = self.inflate(&data)?;
        }
        Ok(Some(match kind {
            Some(Kind::Text) => Message::Text(
                String::from_utf8(data).map_err(|_| WsError::invalid("text is not UTF-8"))?,
            ),
            _ => Message::Binary(data),
        }))
    }

    fn inflate(&self, compressed: &[u8]) -> Result<Vec<u8>, WsError> {
        // parse_header only lets RSV1 through when deflate was agreed.
        if self.deflate.is_none() {
            return Err(WsError::protocol("RSV1 without permessage-deflate"));
        }
        deflate::inflate(compressed, self.max_message).map_err(|e| match e {
            InflateError::TooBig => WsError::too_big("message over the limit"),
            InflateError::Corrupt => WsError::invalid("invalid deflate data"),
        })
    }
}
