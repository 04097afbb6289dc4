//! WebSocket (RFC 6455) server side over byte buffers: the upgrade check,
//! client frame parsing, message reassembly and server frame encoding.
//!
//! Invariants:
//! - Parsers answer `Ok(None)` (or consume 0 bytes) for "incomplete", never
//!   block. Every error carries the close code to send before closing:
//!   1002 protocol, 1007 invalid payload, 1009 too big.
//! - Header errors are reported as soon as the header bytes are there, and
//!   text is validated as its bytes arrive ([`Reassembler::decode`] consumes
//!   partial frames), so invalid input fails fast, not at the end of a frame
//!   or message (Autobahn 6.4.x).
//! - An idle [`Reassembler`] is at most 72 bytes and owns no heap memory:
//!   message bytes are moved out with the finished message, and an
//!   inflater exists only while a compressed message is inflated (every
//!   client agrees to `client_no_context_takeover`, see `deflate`).
//! - Server frames are never masked; client frames must be.

use std::fmt;

use crate::proto::deflate;

mod reassemble;
mod upgrade;

pub use reassemble::Reassembler;
pub use upgrade::{accept_response, check_upgrade, UpgradeError};

/// Close codes redix sends (RFC 6455 §7.4.1 and the IANA registry).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const RESTART: u16 = 1012;
    /// redix: the subscription token expired; subscribe again (with
    /// `since`) on a new connection with a fresh token.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// redix: a slow consumer; the reason is the id to resume from.
    pub const SLOW: u16 = 4008;
}

/// Largest control frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL: usize = 125;

// ---------------------------------------------------------------- frames

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xa,
}

impl OpCode {
    /// `None` for the reserved opcodes 3–7 and 0xb–0xf.
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xa => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }
}

/// A failed connection: send a close frame with `code` and `reason`, then close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsError {
    pub code: u16,
    pub reason: &'static str,
}

impl WsError {
    const fn protocol(reason: &'static str) -> Self {
        WsError {
            code: close_code::PROTOCOL,
            reason,
        }
    }

    const fn invalid(reason: &'static str) -> Self {
        WsError {
            code: close_code::INVALID_PAYLOAD,
            reason,
        }
    }

    const fn too_big(reason: &'static str) -> Self {
        WsError {
            code: close_code::TOO_BIG,
            reason,
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

impl std::error::Error for WsError {}

/// A client frame header. Client frames are always masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// "Compressed" under permessage-deflate; only on a message's first frame.
    pub rsv1: bool,
    pub opcode: OpCode,
    pub mask: [u8; 4],
    pub len: u64,
}

/// Parses a client frame header at the start of `buf`, with its length.
///
/// Rule violations are reported from the first two bytes on, before the
/// rest of the header or any payload arrives. `rsv1_allowed`: permessage-deflate
/// was negotiated (RSV1 is then legal on the first frame of a data message).
pub fn parse_header(
    buf: &[u8],
    max_payload: u64,
    rsv1_allowed: bool,
) -> Result<Option<(FrameHeader, usize)>, WsError> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    let (fin, rsv1) = (b0 & 0x80 != 0, b0 & 0x40 != 0);
    if b0 & 0x30 != 0 {
        return Err(WsError::protocol("reserved bits set"));
    }
    let opcode = OpCode::from_bits(b0 & 0x0f).ok_or(WsError::protocol("reserved opcode"))?;
    if rsv1 && !(rsv1_allowed && matches!(opcode, OpCode::Text | OpCode::Binary)) {
        return Err(WsError::protocol("RSV1 set without a message to compress"));
    }
    let short_len = b1 & 0x7f;
    if opcode.is_control() && !fin {
        return Err(WsError::protocol("fragmented control frame"));
    }
    if opcode.is_control() && usize::from(short_len) > MAX_CONTROL {
        return Err(WsError::protocol("control frame over 125 bytes"));
    }
    if b1 & 0x80 == 0 {
        return Err(WsError::protocol("unmasked client frame"));
    }
    // Non-minimal length encodings are legal (RFC 6455 §5.2 says "minimal
    // number of bytes MUST be used" for senders only; Autobahn accepts both).
    let (len, at) = match short_len {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                (u64::from_be_bytes(n), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len >> 63 != 0 {
        return Err(WsError::protocol("64-bit length with the top bit set"));
    }
    if len > max_payload {
        return Err(WsError::too_big("frame over the message limit"));
    }
    let Some(m) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    let mask = [m[0], m[1], m[2], m[3]];
    Ok(Some((
        FrameHeader {
            fin,
            rsv1,
            opcode,
            mask,
            len,
        },
        at + 4,
    )))
}

/// Like [`parse_header`], but `Ok(None)` until the whole payload is in `buf`
/// too: the payload is `buf[header_len..header_len + len]`, still masked.
pub fn parse_frame(
    buf: &[u8],
    max_payload: u64,
    rsv1_allowed: bool,
) -> Result<Option<(FrameHeader, usize)>, WsError> {
    match parse_header(buf, max_payload, rsv1_allowed)? {
        Some((h, hl)) if ((buf.len() - hl) as u64) >= h.len => Ok(Some((h, hl))),
        _ => Ok(None),
    }
}

/// XORs `payload` with `mask`; `offset` is the payload's position within
/// its frame, so a frame can be unmasked piece by piece. Runs on every
/// client byte, so it works a machine word at a time.
pub fn unmask(payload: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut m = mask;
    m.rotate_left(offset % 4);
    let word = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    // Chunks are multiples of 4 long, so the remainder starts at mask phase 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

// ---------------------------------------------------------------- messages

/// A complete message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// `None`: the close frame had no status code.
    Close(Option<CloseFrame>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: u16,
    pub reason: String,
}

/// Whether a peer may send `code` (RFC 6455 §7.4 and the IANA registry:
/// 1012–1014 were registered later; 1004–1006 and 1015 are never sent).
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses a close frame's payload (RFC 6455 §5.5.1).
pub fn parse_close(payload: &[u8]) -> Result<Option<CloseFrame>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(WsError::protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|_| WsError::invalid("close reason is not UTF-8"))?;
            Ok(Some(CloseFrame {
                code,
                reason: reason.to_string(),
            }))
        }
    }
}

fn control_message(opcode: OpCode, payload: &[u8]) -> Result<Message, WsError> {
    Ok(match opcode {
        OpCode::Ping => Message::Ping(payload.to_vec()),
        OpCode::Pong => Message::Pong(payload.to_vec()),
        _ => Message::Close(parse_close(payload)?),
    })
}

// ---------------------------------------------------------------- encoding

/// A server frame header (never masked): the bytes and how many are used.
pub fn frame_header(opcode: OpCode, fin: bool, rsv1: bool, len: u64) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = (u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode as u8;
    let used = match len {
        0..=125 => {
            h[1] = len as u8;
            2
        }
        126..=0xffff => {
            h[1] = 126;
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            h[1] = 127;
            h[2..10].copy_from_slice(&len.to_be_bytes());
            10
        }
    };
    (h, used)
}

/// One unfragmented server frame. `rsv1`: `payload` came from
/// [`deflate::compress`].
pub fn encode_frame(opcode: OpCode, payload: &[u8], rsv1: bool) -> Vec<u8> {
    let (h, n) = frame_header(opcode, true, rsv1, payload.len() as u64);
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
    out
}

pub fn text(s: &str) -> Vec<u8> {
    encode_frame(OpCode::Text, s.as_bytes(), false)
}

/// A text frame compressed for a client that agreed to permessage-deflate
/// with a `window`.
pub fn compressed_text(s: &str, window: deflate::WindowBits) -> Vec<u8> {
    encode_frame(OpCode::Text, &deflate::compress(s.as_bytes(), window), true)
}

/// A ping; the payload is cut to 125 bytes.
pub fn ping(payload: &[u8]) -> Vec<u8> {
    encode_frame(
        OpCode::Ping,
        &payload[..payload.len().min(MAX_CONTROL)],
        false,
    )
}

/// The answer to a ping carrying `payload` (≤ 125 bytes once parsed).
pub fn pong(payload: &[u8]) -> Vec<u8> {
    encode_frame(
        OpCode::Pong,
        &payload[..payload.len().min(MAX_CONTROL)],
        false,
    )
}

/// A close frame; the reason is cut at a character boundary to fit 125 bytes.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode_frame(OpCode::Close, &payload, false)
}

#[cfg(test)]
mod tests;
