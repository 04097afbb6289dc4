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
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const MAX: usize = 1 << 16;

    /// Client frames, each as it goes on the wire.
    type Frames = Vec<Vec<u8>>;
    /// An expected outcome, or the close code of the expected failure.
    type Code<T> = Result<T, u16>;
    /// A parsed close frame's code and reason.
    type Close<'a> = Option<(u16, &'a str)>;

    /// A masked client frame, as a browser would send it.
    fn client(opcode: u8, fin: bool, rsv1: bool, payload: &[u8]) -> Vec<u8> {
        let op = OpCode::from_bits(opcode).unwrap_or(OpCode::Binary);
        let (h, n) = frame_header(op, fin, rsv1, payload.len() as u64);
        let mut out = h[..n].to_vec();
        out[0] = (out[0] & 0xf0) | opcode;
        out[1] |= 0x80;
        out.extend_from_slice(&MASK);
        let start = out.len();
        out.extend_from_slice(payload);
        unmask(&mut out[start..], MASK, 0);
        out
    }

    /// Decodes `pieces` as they would arrive in a read buffer, the way the
    /// reactor drives it: consume what it can, keep the rest for the next read.
    fn decode_pieces<'a>(
        r: &mut Reassembler,
        pieces: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<Message>, WsError> {
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for piece in pieces {
            pending.extend_from_slice(piece);
            loop {
                let (n, msg) = r.decode(&mut pending)?;
                pending.drain(..n);
                out.extend(msg);
                if n == 0 {
                    break;
                }
            }
        }
        assert!(pending.is_empty(), "left over: {pending:x?}");
        Ok(out)
    }

    /// Decodes `wire` arriving `step` bytes at a time.
    fn decode_all(r: &mut Reassembler, wire: &[u8], step: usize) -> Result<Vec<Message>, WsError> {
        decode_pieces(r, wire.chunks(step.max(1)))
    }

    fn decode(wire: &[u8]) -> Result<Vec<Message>, WsError> {
        decode_all(&mut Reassembler::new(MAX, None), wire, wire.len())
    }

    fn text_msg(s: &str) -> Message {
        Message::Text(s.to_string())
    }

    #[test]
    fn rfc6455_accept_key() {
        let accept = check_upgrade(
            true,
            Some("websocket"),
            true,
            Some("13"),
            Some("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(accept.as_deref(), Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    }

    #[test]
    fn upgrade_errors_map_to_statuses() {
        let key = Some("dGhlIHNhbXBsZSBub25jZQ==");
        type Case<'a> = (
            bool,
            Option<&'a str>,
            bool,
            Option<&'a str>,
            Option<&'a str>,
        );
        let table: [(Case, Result<(), UpgradeError>, u16); 13] = [
            (
                (true, Some("WebSocket"), true, Some("13"), key),
                Ok(()),
                101,
            ),
            (
                (true, Some("h2c, websocket"), true, Some("13"), key),
                Ok(()),
                101,
            ),
            (
                (false, Some("websocket"), true, Some("13"), key),
                Err(UpgradeError::NotGet),
                405,
            ),
            (
                (true, None, true, Some("13"), key),
                Err(UpgradeError::NoUpgradeHeader),
                426,
            ),
            (
                (true, Some("h2c"), true, Some("13"), key),
                Err(UpgradeError::NotWebSocket),
                400,
            ),
            (
                (true, Some("websocket"), false, Some("13"), key),
                Err(UpgradeError::NoConnectionUpgrade),
                400,
            ),
            (
                (true, Some("websocket"), true, Some("8"), key),
                Err(UpgradeError::Version),
                426,
            ),
            (
                (true, Some("websocket"), true, None, key),
                Err(UpgradeError::Version),
                426,
            ),
            (
                (true, Some("websocket"), true, Some("13"), None),
                Err(UpgradeError::BadKey),
                400,
            ),
            // 12 bytes, not 16.
            (
                (
                    true,
                    Some("websocket"),
                    true,
                    Some("13"),
                    Some("AAAAAAAAAAAAAAAA"),
                ),
                Err(UpgradeError::BadKey),
                400,
            ),
            (
                (
                    true,
                    Some("websocket"),
                    true,
                    Some("13"),
                    Some("dGhlIHNhbXBsZSBub25jZQ"),
                ),
                Err(UpgradeError::BadKey),
                400,
            ),
            (
                (
                    true,
                    Some("websocket"),
                    true,
                    Some("13"),
                    Some("dGhlIHNhbXBsZSBub25jZ*=="),
                ),
                Err(UpgradeError::BadKey),
                400,
            ),
            (
                (
                    true,
                    Some("websocket"),
                    true,
                    Some("13"),
                    Some("dGhlIHNhbXBsZSBub25jZQ=A"),
                ),
                Err(UpgradeError::BadKey),
                400,
            ),
        ];
        for ((get, up, conn, ver, key), want, status) in table {
            let got = check_upgrade(get, up, conn, ver, key).map(|_| ());
            assert_eq!(got, want, "{up:?} {ver:?} {key:?}");
            if let Err(e) = got {
                assert_eq!(e.status(), status);
            }
        }
        let r = String::from_utf8(UpgradeError::Version.response(false)).unwrap_or_default();
        assert!(r.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{r}");
        assert!(r.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{r}");
        assert!(r.contains("upgrade_required"), "{r}");
    }

    #[test]
    fn accept_response_lines() {
        let r = accept_response("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", None);
        assert_eq!(
            r,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        let r = accept_response("x", Some("permessage-deflate; server_no_context_takeover"));
        assert!(r.ends_with(
            b"Sec-WebSocket-Accept: x\r\n\
Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"
        ));
    }

    #[test]
    fn rfc6455_masked_hello() {
        // RFC 6455 §5.7: a single-frame masked text message.
        let wire = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(client(0x1, true, false, b"Hello"), wire);
        assert_eq!(decode(&wire), Ok(vec![text_msg("Hello")]));
        let (h, hl) = parse_frame(&wire, 125, false).unwrap().unwrap();
        assert_eq!(
            (h.opcode, h.fin, h.len, h.mask, hl),
            (OpCode::Text, true, 5, MASK, 6)
        );
    }

    #[test]
    fn rfc6455_server_frames() {
        // RFC 6455 §5.7 unmasked examples.
        assert_eq!(text("Hello"), [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(ping(b"Hello"), [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(pong(b"Hello")[0], 0x8a);
        let table: [(u64, &[u8]); 6] = [
            (0, &[0x82, 0x00]),
            (125, &[0x82, 125]),
            (126, &[0x82, 126, 0x00, 126]),
            (256, &[0x82, 0x7e, 0x01, 0x00]),
            (65535, &[0x82, 0x7e, 0xff, 0xff]),
            (65536, &[0x82, 0x7f, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]),
        ];
        for (len, want) in table {
            let (h, n) = frame_header(OpCode::Binary, true, false, len);
            assert_eq!(&h[..n], want, "{len}");
        }
        let (h, n) = frame_header(OpCode::Text, false, true, 3);
        assert_eq!(&h[..n], [0x41, 3]);
        assert_eq!(
            compressed_text("Hello"),
            [0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]
        );
    }

    #[test]
    fn close_frames_cut_reason_at_char_boundary() {
        assert_eq!(close_frame(1000, ""), [0x88, 0x02, 0x03, 0xe8]);
        assert_eq!(
            close_frame(4008, "slow"),
            [0x88, 0x06, 0x0f, 0xa8, b's', b'l', b'o', b'w']
        );
        let long = "é".repeat(100);
        let f = close_frame(1001, &long);
        assert_eq!(f.len(), 2 + 2 + 122);
        assert_eq!(
            parse_close(&f[2..]).map(|c| c.map(|c| c.reason.len())),
            Ok(Some(122))
        );
        assert_eq!(ping(&[7; 200]).len(), 2 + MAX_CONTROL);
    }

    #[test]
    fn header_errors_carry_close_codes() {
        let m = [0x82, 0x85, 1, 2, 3, 4];
        let table: [(&[u8], bool, u64, u16); 15] = [
            (&[0x91, 0x80], false, MAX as u64, 1002), // RSV3
            (&[0xa1, 0x80], false, MAX as u64, 1002), // RSV2
            (&[0xc1, 0x80], false, MAX as u64, 1002), // RSV1 without deflate
            (&[0xc0, 0x80], true, MAX as u64, 1002),  // RSV1 on a continuation
            (&[0xc9, 0x80], true, MAX as u64, 1002),  // RSV1 on a ping
            (&[0x83, 0x80], false, MAX as u64, 1002), // reserved data opcode
            (&[0x8b, 0x80], false, MAX as u64, 1002), // reserved control opcode
            (&[0x09, 0x80], false, MAX as u64, 1002), // fragmented ping
            (&[0x89, 0xfe], false, MAX as u64, 1002), // ping of 126 bytes
            (&[0x88, 0xff], false, MAX as u64, 1002), // close with 64-bit length
            (&[0x81, 0x05], false, MAX as u64, 1002), // unmasked
            (
                &[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0],
                false,
                u64::MAX,
                1002,
            ),
            (&[0x82, 0xfe, 0x01, 0x00], false, 255, 1009),
            (
                &[0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0],
                false,
                MAX as u64,
                1009,
            ),
            (&m, false, 4, 1009),
        ];
        for (wire, rsv1, max, code) in table {
            let got = parse_header(wire, max, rsv1).map_err(|e| e.code);
            assert_eq!(got, Err(code), "{wire:x?}");
        }
        // RSV1 is fine on the first frame of a message once deflate is agreed.
        assert!(parse_header(&[0xc1, 0x80, 0, 0, 0, 0], 10, true).is_ok_and(|h| h.is_some()));
        assert!(parse_header(&[0x41, 0x80, 0, 0, 0, 0], 10, true).is_ok_and(|h| h.is_some()));
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete() {
        for len in [0usize, 5, 125, 126, 300, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let wire = client(0x2, true, false, &payload);
            for cut in 0..wire.len() {
                assert_eq!(
                    parse_frame(&wire[..cut], 1 << 20, false),
                    Ok(None),
                    "{len} cut {cut}"
                );
            }
            let (h, hl) = parse_frame(&wire, 1 << 20, false).unwrap().unwrap();
            assert_eq!((h.len as usize, hl + len), (len, wire.len()));
            let mut body = wire[hl..].to_vec();
            unmask(&mut body, h.mask, 0);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn non_minimal_lengths_are_accepted() {
        let table: [&[u8]; 2] = [
            &[0x81, 0xfe, 0x00, 0x02, 0, 0, 0, 0, b'h', b'i'],
            &[
                0x81, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, b'h', b'i',
            ],
        ];
        for wire in table {
            assert_eq!(decode(wire), Ok(vec![text_msg("hi")]));
        }
    }

    #[test]
    fn unmask_matches_bytewise_at_every_offset_and_length() {
        let mask = [0xde, 0xad, 0xbe, 0xef];
        for len in 0..40 {
            for offset in 0..8 {
                let plain: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
                let mut fast = plain.clone();
                unmask(&mut fast, mask, offset);
                let slow: Vec<u8> = plain
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[(i + offset) % 4])
                    .collect();
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
        // Unmasking in pieces equals unmasking at once.
        let mut whole: Vec<u8> = (0..100).collect();
        let mut pieces = whole.clone();
        unmask(&mut whole, mask, 0);
        let (a, rest) = pieces.split_at_mut(7);
        let (b, c) = rest.split_at_mut(30);
        unmask(a, mask, 0);
        unmask(b, mask, 7);
        unmask(c, mask, 37);
        assert_eq!(whole, pieces);
    }

    #[test]
    fn fragmentation_rules() {
        let ping = client(0x9, true, false, b"p");
        let table: Vec<(Frames, Code<Vec<Message>>)> = vec![
            // Autobahn 5.3: text in two fragments.
            (
                vec![
                    client(0x1, false, false, b"frag"),
                    client(0x0, true, false, b"ment"),
                ],
                Ok(vec![text_msg("fragment")]),
            ),
            // 5.6: a ping between fragments comes out at once.
            (
                vec![
                    client(0x1, false, false, b"a"),
                    ping.clone(),
                    client(0x0, true, false, b"b"),
                ],
                Ok(vec![Message::Ping(b"p".to_vec()), text_msg("ab")]),
            ),
            // Empty fragments are fine.
            (
                vec![
                    client(0x2, false, false, b""),
                    client(0x0, false, false, b""),
                    client(0x0, true, false, b""),
                ],
                Ok(vec![Message::Binary(vec![])]),
            ),
            // 5.9: continuation without a start.
            (vec![client(0x0, true, false, b"x")], Err(1002)),
            // 5.15: a continuation after the message ended.
            (
                vec![
                    client(0x1, false, false, b"a"),
                    client(0x0, true, false, b"b"),
                    client(0x0, false, false, b"c"),
                ],
                Err(1002),
            ),
            // 5.18: a new text frame while one is in progress.
            (
                vec![
                    client(0x1, false, false, b"a"),
                    client(0x1, true, false, b"b"),
                ],
                Err(1002),
            ),
            // 5.1: a fragmented ping.
            (vec![client(0x9, false, false, b"p")], Err(1002)),
            // A close in the middle of a fragmented message is still a close.
            (
                vec![
                    client(0x1, false, false, b"a"),
                    client(0x8, true, false, &[0x03, 0xe8]),
                ],
                Ok(vec![Message::Close(Some(CloseFrame {
                    code: 1000,
                    reason: String::new(),
                }))]),
            ),
        ];
        for (frames, want) in table {
            let wire = frames.concat();
            let got = decode(&wire).map_err(|e| e.code);
            assert_eq!(got, want, "{wire:x?}");
            // Frame by frame through push gives the same answer.
            let mut r = Reassembler::new(MAX, None);
            let mut pushed = Ok(Vec::new());
            for f in &frames {
                let Ok(Some((h, hl))) = parse_frame(f, MAX as u64, false) else {
                    pushed = Err(1002);
                    break;
                };
                let mut body = f[hl..].to_vec();
                unmask(&mut body, h.mask, 0);
                match r.push(&h, &body) {
                    Ok(m) => pushed
                        .as_mut()
                        .map(|v: &mut Vec<Message>| v.extend(m))
                        .unwrap_or(()),
                    Err(e) => {
                        pushed = Err(e.code);
                        break;
                    }
                }
            }
            assert_eq!(pushed, want, "push {wire:x?}");
        }
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let wire = [
            client(0x1, false, false, "κόσ".as_bytes()),
            client(0xa, true, false, b"pong"),
            client(0x0, true, false, "με".as_bytes()),
            client(0x2, true, false, &[9; 300]),
            client(0x8, true, false, &[0x03, 0xe9, b'b', b'y', b'e']),
        ]
        .concat();
        let want = vec![
            Message::Pong(b"pong".to_vec()),
            text_msg("κόσμε"),
            Message::Binary(vec![9; 300]),
            Message::Close(Some(CloseFrame {
                code: 1001,
                reason: "bye".into(),
            })),
        ];
        for step in 1..=wire.len() {
            let got = decode_all(&mut Reassembler::new(MAX, None), &wire, step);
            assert_eq!(got.as_ref(), Ok(&want), "step {step}");
        }
        // Two reads, cut at every position.
        for cut in 0..wire.len() {
            let got = decode_pieces(
                &mut Reassembler::new(MAX, None),
                [&wire[..cut], &wire[cut..]],
            );
            assert_eq!(got.as_ref(), Ok(&want), "cut {cut}");
        }
    }

    #[test]
    fn utf8_across_fragments() {
        // Autobahn 6.2.x: a valid message split inside code points.
        let s = "Hello-µ@ßöäüàá-UTF-8!!\u{10348}";
        let bytes = s.as_bytes();
        for cut in 1..bytes.len() {
            let wire = [
                client(0x1, false, false, &bytes[..cut]),
                client(0x0, true, false, &bytes[cut..]),
            ]
            .concat();
            assert_eq!(decode(&wire), Ok(vec![text_msg(s)]), "cut {cut}");
        }
        let table: [&[u8]; 6] = [
            b"\xff",
            b"\xc0\xaf",         // overlong
            b"\xed\xa0\x80",     // surrogate
            b"\xf4\x90\x80\x80", // over U+10FFFF
            b"ok\xe2\x82",       // cut off at the end
            b"\xce\xba\xe1",     // cut off at the end
        ];
        for bad in table {
            let got = decode(&client(0x1, true, false, bad)).map_err(|e| e.code);
            assert_eq!(got, Err(1007), "{bad:x?}");
        }
    }

    #[test]
    fn invalid_utf8_fails_at_the_first_bad_fragment() {
        // Autobahn 6.4.1: valid, then a fragment making it invalid, then more.
        let mut r = Reassembler::new(MAX, None);
        let mut f1 = client(0x1, false, false, "κόσμε".as_bytes());
        let mut f2 = client(0x0, false, false, &[0xf4, 0x90, 0x80, 0x80]);
        assert_eq!(
            r.decode(&mut f1).map(|(n, m)| (n, m.is_none())),
            Ok((f1.len(), true))
        );
        assert_eq!(r.decode(&mut f2).map_err(|e| e.code), Err(1007));
        // Autobahn 6.4.3: the same inside one frame arriving in chops; the
        // error comes with the chop that holds the bad bytes, before the
        // frame's end.
        let payload = [
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5".as_slice(),
            b"\xf4\x90\x80\x80",
            b"\xce\xbc",
        ]
        .concat();
        let wire = client(0x1, true, false, &payload);
        let mut r = Reassembler::new(MAX, None);
        let mut first = wire[..6 + 11].to_vec();
        assert_eq!(
            r.decode(&mut first).map(|(n, m)| (n, m.is_none())),
            Ok((17, true))
        );
        let mut second = wire[17..19].to_vec();
        assert_eq!(r.decode(&mut second).map_err(|e| e.code), Err(1007));
        // A sequence that could still be completed is not an error yet.
        let mut r = Reassembler::new(MAX, None);
        let mut partial = client(0x1, false, false, b"ok\xe2\x82");
        assert!(r.decode(&mut partial).is_ok());
        let mut rest = client(0x0, true, false, b"\xac");
        assert_eq!(
            r.decode(&mut rest).map(|(_, m)| m),
            Ok(Some(text_msg("ok€")))
        );
    }

    #[test]
    fn close_payload_rules() {
        let table: [(&[u8], Code<Close>); 16] = [
            (&[], Ok(None)),
            (&[0x03], Err(1002)),
            (&[0x03, 0xe8], Ok(Some((1000, "")))),
            (&[0x03, 0xe8, b'o', b'k'], Ok(Some((1000, "ok")))),
            (&[0x03, 0xeb], Ok(Some((1003, "")))),
            (&[0x03, 0xef], Ok(Some((1007, "")))),
            (&[0x03, 0xf3], Ok(Some((1011, "")))),
            (&[0x0b, 0xb8], Ok(Some((3000, "")))),
            (&[0x13, 0x87], Ok(Some((4999, "")))),
            (&[0x03, 0xe7], Err(1002)), // 999
            (&[0x03, 0xec], Err(1002)), // 1004
            (&[0x03, 0xed], Err(1002)), // 1005
            (&[0x03, 0xee], Err(1002)), // 1006
            (&[0x03, 0xf7], Err(1002)), // 1015
            (&[0x0b, 0xb7], Err(1002)), // 2999
            (&[0x03, 0xe8, 0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xff], Err(1007)),
        ];
        for (payload, want) in table {
            let got = decode(&client(0x8, true, false, payload)).map_err(|e| e.code);
            let want = want.map(|c| {
                vec![Message::Close(c.map(|(code, reason)| CloseFrame {
                    code,
                    reason: reason.into(),
                }))]
            });
            assert_eq!(got, want, "{payload:x?}");
        }
        for (code, valid) in [
            (0, false),
            (1016, false),
            (1100, false),
            (2000, false),
            (5000, false),
            (1012, true),
            (1014, true),
            (4000, true),
        ] {
            assert_eq!(is_valid_close_code(code), valid, "{code}");
        }
    }

    #[test]
    fn message_size_is_capped() {
        let table: [(Frames, Code<usize>); 4] = [
            (vec![client(0x2, true, false, &[0; 100])], Ok(100)),
            (vec![client(0x2, true, false, &[0; 101])], Err(1009)),
            (
                vec![
                    client(0x1, false, false, &[b'a'; 60]),
                    client(0x0, true, false, &[b'a'; 40]),
                ],
                Ok(100),
            ),
            (
                vec![
                    client(0x1, false, false, &[b'a'; 60]),
                    client(0x0, true, false, &[b'a'; 41]),
                ],
                Err(1009),
            ),
        ];
        for (frames, want) in table {
            let mut r = Reassembler::new(100, None);
            let got = decode_all(&mut r, &frames.concat(), 7).map_err(|e| e.code);
            let got = got.map(|m| match &m[..] {
                [Message::Text(t)] => t.len(),
                [Message::Binary(b)] => b.len(),
                _ => usize::MAX,
            });
            assert_eq!(got, want);
        }
        // The limit is reported from the header alone, before any payload.
        let mut r = Reassembler::new(100, None);
        let mut head = client(0x2, true, false, &[0; 1000])[..8].to_vec();
        assert_eq!(r.decode(&mut head).map_err(|e| e.code), Err(1009));
    }

    #[test]
    fn large_fragmented_messages_assemble_in_linear_time() {
        // Autobahn 9.3.x: 4 MiB in 64-byte fragments, fed in 4 KiB reads.
        let payload = vec![b'*'; 4 << 20];
        let mut wire = Vec::with_capacity(payload.len() * 2);
        for (i, part) in payload.chunks(64).enumerate() {
            let op = if i == 0 { 0x1 } else { 0x0 };
            wire.extend(client(op, (i + 1) * 64 >= payload.len(), false, part));
        }
        let mut r = Reassembler::new(16 << 20, None);
        let got = decode_all(&mut r, &wire, 4096);
        assert!(matches!(&got.as_deref(), Ok([Message::Text(t)]) if t.len() == 4 << 20));
        assert_eq!(
            r.buf.capacity(),
            0,
            "an idle reassembler holds no message memory"
        );
        assert!(!r.in_message());
    }

    fn deflated(no_takeover: bool) -> Reassembler {
        let ag = deflate::negotiate(Some(if no_takeover {
            "permessage-deflate; client_no_context_takeover"
        } else {
            "permessage-deflate"
        }));
        Reassembler::new(MAX, ag)
    }

    #[test]
    fn compressed_messages() {
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        // RFC 7692 §7.2.3.1 and §7.2.3.2 (two fragments, RSV1 on the first only).
        let single = client(0x1, true, true, &hello);
        let frags = [
            client(0x1, false, true, &hello[..3]),
            client(0x0, true, false, &hello[3..]),
        ]
        .concat();
        for wire in [&single, &frags] {
            let mut r = deflated(true);
            assert_eq!(decode_all(&mut r, wire, 1), Ok(vec![text_msg("Hello")]));
            assert!(
                r.inflater.is_none(),
                "dropped under client_no_context_takeover"
            );
        }
        // With context takeover the second message refers to the first.
        let mut r = deflated(false);
        let second = client(0x1, true, true, &[0xf2, 0x00, 0x11, 0x00, 0x00]);
        let got = decode_all(&mut r, &[single.clone(), second].concat(), 3);
        assert_eq!(got, Ok(vec![text_msg("Hello"), text_msg("Hello")]));
        assert!(r.inflater.as_ref().is_some_and(|i| i.idle_bytes() >= 10));
        // Round trip of our own output, and an uncompressed message in between.
        let json = r#"{"type":"subscribe","channel":"news"}"#;
        let wire = [
            client(0x1, true, true, &deflate::compress(json.as_bytes())),
            client(0x2, true, false, b"raw"),
        ]
        .concat();
        assert_eq!(
            decode_all(&mut deflated(true), &wire, 5),
            Ok(vec![text_msg(json), Message::Binary(b"raw".to_vec())])
        );
    }

    #[test]
    fn compressed_message_errors() {
        let bomb = deflate::compress(&vec![b'a'; 1 << 20]);
        let bad_utf8 = deflate::compress(b"ok\xff");
        let table: [(Vec<u8>, bool, u16); 5] = [
            (client(0x1, true, true, &bomb), true, 1009),
            (client(0x1, true, true, &bad_utf8), true, 1007),
            (client(0x1, true, true, &[0xff, 0xff, 0xff]), true, 1007),
            // RSV1 without the extension, and on a continuation.
            (client(0x1, true, true, b"x"), false, 1002),
            (
                [
                    client(0x1, false, true, &bomb[..2]),
                    client(0x0, true, true, &bomb[2..]),
                ]
                .concat(),
                true,
                1002,
            ),
        ];
        for (wire, agreed, code) in table {
            let mut r = if agreed {
                deflated(true)
            } else {
                Reassembler::new(MAX, None)
            };
            assert_eq!(
                decode_all(&mut r, &wire, wire.len()).map_err(|e| e.code),
                Err(code)
            );
        }
        // Binary is not UTF-8 checked after inflating.
        let mut r = deflated(true);
        let got = decode_all(&mut r, &client(0x2, true, true, &bad_utf8), 64);
        assert_eq!(got, Ok(vec![Message::Binary(b"ok\xff".to_vec())]));
    }

    #[test]
    fn idle_state_is_small() {
        assert!(
            mem::size_of::<Reassembler>() <= 72,
            "{}",
            mem::size_of::<Reassembler>()
        );
        let r = Reassembler::new(MAX, deflate::negotiate(Some("permessage-deflate")));
        assert!(r.inflater.is_none() && r.buf.capacity() == 0);
    }
}
