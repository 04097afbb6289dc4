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
//! - An idle [`Reassembler`] is 72 bytes and owns no heap memory: message
//!   bytes are moved out with the finished message, and an inflater exists
//!   only while a compressed message is inflated. The one exception is a
//!   client that keeps its deflate context: then the tail of what it sent
//!   (at most its window) is kept for the next message (see `deflate`).
//! - Server frames are never masked; client frames must be.

use std::fmt;
use std::mem;

use crate::proto::deflate::{self, Agreement, InflateError, Inflater};
use crate::proto::http::{self, HttpError};

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
    /// redix: a slow consumer; the reason is the id to resume from.
    pub const SLOW: u16 = 4008;
}

/// Largest control frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL: usize = 125;

// ---------------------------------------------------------------- upgrade

/// Why an upgrade request was refused; see [`UpgradeError::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeError {
    NotGet,
    NoUpgradeHeader,
    NotWebSocket,
    NoConnectionUpgrade,
    /// Missing or not 13.
    Version,
    /// Missing, or not base64 of 16 bytes.
    BadKey,
}

impl UpgradeError {
    pub fn status(self) -> u16 {
        match self {
            UpgradeError::NotGet => 405,
            UpgradeError::NoUpgradeHeader | UpgradeError::Version => 426,
            _ => 400,
        }
    }

    /// Header lines the error response must carry.
    pub fn headers(self) -> &'static [&'static str] {
        match self {
            UpgradeError::NotGet => &["Allow: GET"],
            // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
            UpgradeError::NoUpgradeHeader => &["Upgrade: websocket"],
            // RFC 6455 §4.2.2: name the versions we speak.
            UpgradeError::Version => &["Sec-WebSocket-Version: 13"],
            _ => &[],
        }
    }

    pub fn http_error(self) -> HttpError {
        let code = match self.status() {
            405 => "method_not_allowed",
            426 => "upgrade_required",
            _ => "bad_request",
        };
        HttpError::new(self.status(), code, self.to_string())
    }

    /// The complete JSON error response.
    pub fn response(self, keep_alive: bool) -> Vec<u8> {
        let extra: Vec<String> = self.headers().iter().map(|h| h.to_string()).collect();
        http::error_response(&self.http_error(), keep_alive, &extra)
    }
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpgradeError::NotGet => "a WebSocket upgrade must be a GET",
            UpgradeError::NoUpgradeHeader => "this endpoint needs a WebSocket upgrade",
            UpgradeError::NotWebSocket => "Upgrade must be websocket",
            UpgradeError::NoConnectionUpgrade => "Connection must include upgrade",
            UpgradeError::Version => "Sec-WebSocket-Version must be 13",
            UpgradeError::BadKey => "Sec-WebSocket-Key must be base64 of 16 bytes",
        })
    }
}

/// Validates an opening handshake (RFC 6455 §4.2.1) and returns the
/// `Sec-WebSocket-Accept` value.
pub fn check_upgrade(
    method_is_get: bool,
    upgrade: Option<&str>,
    connection_upgrade: bool,
    version: Option<&str>,
    key: Option<&str>,
) -> Result<String, UpgradeError> {
    if !method_is_get {
        return Err(UpgradeError::NotGet);
    }
    let upgrade = upgrade.ok_or(UpgradeError::NoUpgradeHeader)?;
    if !upgrade
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
    {
        return Err(UpgradeError::NotWebSocket);
    }
    if !connection_upgrade {
        return Err(UpgradeError::NoConnectionUpgrade);
    }
    if version.map(str::trim) != Some("13") {
        return Err(UpgradeError::Version);
    }
    let key = key.map(str::trim).filter(|k| is_key(k));
    let key = key.ok_or(UpgradeError::BadKey)?;
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// 22 base64 characters and `==`: exactly what 16 bytes encode to.
fn is_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b.ends_with(b"==")
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// The `101 Switching Protocols` response; `extensions` is the agreed
/// `Sec-WebSocket-Extensions` value, if any.
pub fn accept_response(accept: &str, extensions: Option<&str>) -> Vec<u8> {
    let mut s = String::with_capacity(160);
    s.push_str("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
    s.push_str("Sec-WebSocket-Accept: ");
    s.push_str(accept);
    s.push_str("\r\n");
    if let Some(ext) = extensions {
        s.push_str("Sec-WebSocket-Extensions: ");
        s.push_str(ext);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

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

/// Per-connection receive state: frames in, whole messages out.
///
/// Drive it with [`decode`](Self::decode) on the read buffer (frames may be
/// split anywhere), or frame by frame with [`push`](Self::push). After an
/// error or a `Close` message, stop feeding it. Idle it is a few dozen
/// bytes and owns no heap memory unless the client keeps its deflate
/// context, in which case it owns that history (at most the client's window).
#[derive(Debug)]
pub struct Reassembler {
    /// The data message so far (compressed bytes when `compressed`).
    buf: Vec<u8>,
    /// Created on the first compressed message; kept only while the client
    /// takes over context.
    inflater: Option<Box<Inflater>>,
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
            inflater: None,
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

    fn inflate(&mut self, compressed: &[u8]) -> Result<Vec<u8>, WsError> {
        // parse_header only lets RSV1 through when deflate was agreed.
        let agreement = self
            .deflate
            .ok_or(WsError::protocol("RSV1 without permessage-deflate"))?;
        let inflater = self
            .inflater
            .get_or_insert_with(|| Box::new(Inflater::new(&agreement)));
        let out = inflater.inflate(compressed, self.max_message);
        if agreement.client_no_context_takeover {
            self.inflater = None;
        }
        out.map_err(|e| match e {
            InflateError::TooBig => WsError::too_big("message over the limit"),
            InflateError::Corrupt => WsError::invalid("invalid deflate data"),
        })
    }
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

/// A text frame compressed for a client that agreed to permessage-deflate.
pub fn compressed_text(s: &str) -> Vec<u8> {
    encode_frame(OpCode::Text, &deflate::compress(s.as_bytes()), true)
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
