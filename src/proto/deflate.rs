//! permessage-deflate (RFC 7692) on flate2's raw deflate (miniz backend).
//!
//! Invariants:
//! - The server never takes over context: every answer carries
//!   `server_no_context_takeover`, so a message's compressed bytes depend on
//!   that message alone and one event compressed once is valid for every
//!   subscriber that negotiated the extension ([`compress`] keeps no state
//!   between messages).
//! - Offers asking for `server_max_window_bits` below 15 are declined, not
//!   honoured: the miniz backend cannot limit its window, and a raw deflate
//!   stream may reference up to 32 KiB back even inside one message. Such a
//!   client may still match a later offer in the same header, or goes
//!   uncompressed.
//! - No idle connection holds an inflater. [`Inflater`] builds one per
//!   compressed message and drops it at the end. When the client keeps its
//!   context (it did not agree to `client_no_context_takeover`), only the
//!   tail of the inflated output (at most the client's window, and never
//!   more than was actually received) is kept, and it is replayed into the
//!   next message's fresh inflater as a stored block. Idle cost is the
//!   history actually received, not ~43 KiB of inflater state.
//! - Inflated output is capped while it is produced, so a small zip bomb is
//!   stopped at the cap (close 1009), never allocated in full.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension token in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// The empty stored block a sync flush ends with; RFC 7692 §7.2.1 strips it
/// from every message on the wire and the receiver appends it back.
pub const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Smallest history kept for a client that takes over context. zlib
/// silently widens a requested 8-bit window to 9 bits, so a client told 8
/// may still reference 512 bytes back.
const MIN_HISTORY_BITS: u8 = 9;

/// The parameters agreed with one client. `Copy`, a few bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// The client compresses every message without reference to earlier ones.
    pub client_no_context_takeover: bool,
    /// `client_max_window_bits=N` the client offered and we echo back, which
    /// binds it to that window. `None`: it may use the full 15 bits.
    pub client_max_window_bits: Option<u8>,
    /// The client offered `server_max_window_bits=15`; an accepted offer
    /// must echo the parameter.
    pub echo_server_max_window_bits: bool,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` value for the 101 response.
    pub fn response_header(&self) -> String {
        let mut s = String::from("permessage-deflate; server_no_context_takeover");
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.echo_server_max_window_bits {
            s.push_str("; server_max_window_bits=15");
        }
        if let Some(bits) = self.client_max_window_bits {
            s.push_str("; client_max_window_bits=");
            s.push_str(&bits.to_string());
        }
        s
    }

    /// Bytes of inflated output to carry from one client message to the next.
    fn history_cap(&self) -> usize {
        if self.client_no_context_takeover {
            return 0;
        }
        let bits = self.client_max_window_bits.unwrap_or(15);
        1 << bits.max(MIN_HISTORY_BITS)
    }
}

/// Picks the first `permessage-deflate` offer in a `Sec-WebSocket-Extensions`
/// value that we can honour. Offers with unknown or repeated parameters or
/// invalid values are skipped (RFC 7692 §5 lets the server decline any offer).
pub fn negotiate(offer: Option<&str>) -> Option<Agreement> {
    split_outside_quotes(offer?, ',').find_map(|ext| {
        let mut parts = split_outside_quotes(ext, ';');
        let name = parts.next()?.trim();
        if !name.eq_ignore_ascii_case(EXTENSION) {
            return None;
        }
        accept_params(parts)
    })
}

/// The agreement for one offer's parameters, or `None` to decline it.
fn accept_params<'a>(params: impl Iterator<Item = &'a str>) -> Option<Agreement> {
    let mut agreement = Agreement {
        client_no_context_takeover: false,
        client_max_window_bits: None,
        echo_server_max_window_bits: false,
    };
    // One bit per parameter name: a repeated parameter declines the offer.
    let mut seen = 0u8;
    for param in params {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param.trim(), None),
        };
        let bit = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 1,
            "client_no_context_takeover" if value.is_none() => {
                agreement.client_no_context_takeover = true;
                2
            }
            "server_max_window_bits" => {
                // Only 15 is honoured: see the module doc.
                if window_bits(value?)? != 15 {
                    return None;
                }
                agreement.echo_server_max_window_bits = true;
                4
            }
            "client_max_window_bits" => {
                // Without a value the client merely supports the parameter;
                // we inflate with a 15-bit window, which reads any smaller one.
                agreement.client_max_window_bits = match value {
                    Some(v) => Some(window_bits(v)?),
                    None => None,
                };
                8
            }
            _ => return None,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
    }
    Some(agreement)
}

/// A window-bits value: decimal 8..=15 without leading zeros (RFC 7692 §7.1.2).
fn window_bits(v: &str) -> Option<u8> {
    if v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// Strips the quotes of a quoted-string value. Escapes are declined: no valid
/// parameter value needs one.
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"').filter(|s| !s.contains(['"', '\\'])),
        None => Some(v),
    }
}

/// Splits on `sep` except inside double quotes.
fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut quoted = false;
        for (i, c) in s.char_indices() {
            match c {
                '"' => quoted = !quoted,
                c if c == sep && !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

thread_local! {
    // miniz's compressor is ~230 KiB: one per thread, never per connection.
    // It is not reset between messages (a reset zeroes all of it: 14 µs for
    // a 100-byte event, against 7 µs with a full flush). Level 1: events are
    // small JSON compressed once on the fan-out path, where speed counts
    // more than the last few percent of ratio (4x faster on 11 KiB of JSON).
    static COMPRESSOR: RefCell<Compress> =
        RefCell::new(Compress::new(Compression::fast(), false));
}

/// Compresses one whole message for a frame with RSV1 set: raw deflate,
/// sync-flushed, trailing `00 00 ff ff` removed (RFC 7692 §7.2.1).
///
/// The output never refers to data before the message: the thread's
/// compressor ends every message with a full flush (`Z_FULL_FLUSH`), which
/// byte-aligns the stream like a sync flush and also forgets the window, so
/// the next message starts as if from a fresh compressor.
///
/// Cost is mostly fixed (~7 µs, the flush clears miniz's hash tables): a
/// 100-byte JSON event shrinks by about a fifth. Sending small messages
/// uncompressed (RSV1 clear) is always allowed, so callers may skip them.
pub fn compress(payload: &[u8]) -> Vec<u8> {
    if payload.is_empty() {
        // An empty stored block (`00 00 00 ff ff`) minus the tail.
        return vec![0x00];
    }
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        let base = c.total_in();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let done = (c.total_in() - base) as usize;
            if c.compress_vec(&payload[done..], &mut out, FlushCompress::Full)
                .is_err()
            {
                // Deflating memory into memory cannot fail with valid
                // settings; should it, start the next message afresh.
                c.reset();
                break;
            }
            // Room left after all input went in means the flush completed.
            if (c.total_in() - base) as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity());
        }
        if out.ends_with(&SYNC_TAIL) {
            out.truncate(out.len() - SYNC_TAIL.len());
        }
        out
    })
}

/// Why a compressed client message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// Inflated output over the cap: close 1009.
    TooBig,
    /// Not a valid deflate stream: close 1007.
    Corrupt,
}

/// Inflates client messages. Idle, it owns only the carried history (empty
/// under `client_no_context_takeover`).
#[derive(Debug)]
pub struct Inflater {
    history: Vec<u8>,
    history_cap: usize,
}

impl Inflater {
    pub fn new(agreement: &Agreement) -> Self {
        Inflater {
            history: Vec::new(),
            history_cap: agreement.history_cap(),
        }
    }

    /// Bytes held between messages.
    pub fn idle_bytes(&self) -> usize {
        self.history.capacity()
    }

    /// Inflates one message's payload (RSV1 frames joined, tail stripped),
    /// refusing output over `max_len` bytes.
    pub fn inflate(&mut self, compressed: &[u8], max_len: usize) -> Result<Vec<u8>, InflateError> {
        let mut d = Decompress::new(false);
        let mut out = Vec::new();
        let primed = self.history.len();
        if primed > 0 {
            // A non-final stored block puts the history in the fresh
            // inflater's window without any compressed data referring to it.
            let n = primed as u16;
            let (lo, hi) = (n.to_le_bytes(), (!n).to_le_bytes());
            let header = [0x00, lo[0], lo[1], hi[0], hi[1]];
            out.reserve_exact(primed + 1024);
            for part in [&header[..], &self.history[..]] {
                feed(&mut d, part, &mut out, primed)?;
            }
        }
        let limit = primed + max_len;
        if !feed(&mut d, compressed, &mut out, limit)? {
            feed(&mut d, &SYNC_TAIL, &mut out, limit)?;
        }
        self.keep_history(&out);
        out.drain(..primed);
        Ok(out)
    }

    /// Remembers the window the next message may refer to.
    fn keep_history(&mut self, out: &[u8]) {
        if self.history_cap == 0 {
            return;
        }
        let start = out.len().saturating_sub(self.history_cap);
        let tail = &out[start..];
        self.history.clear();
        self.history.reserve_exact(tail.len());
        self.history.extend_from_slice(tail);
    }
}

/// Feeds `input` to `d`, appending to `out` but never past `limit` bytes.
/// `Ok(true)` once the deflate stream ended (a final block; trailing input
/// is ignored, as RFC 7692 §7.2.3.4 allows).
fn feed(
    d: &mut Decompress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<bool, InflateError> {
    loop {
        if out.len() == out.capacity() {
            // Grow geometrically but never past limit + 1: one byte over is
            // enough to know the cap was crossed.
            let room = (limit + 1).saturating_sub(out.len());
            out.reserve_exact(out.len().clamp(1024, 1 << 20).min(room).max(1));
        }
        let (in_before, out_before) = (d.total_in(), out.len());
        let status = d
            .decompress_vec(input, out, FlushDecompress::None)
            .map_err(|_| InflateError::Corrupt)?;
        let used = (d.total_in() - in_before) as usize;
        input = &input[used..];
        if out.len() > limit {
            return Err(InflateError::TooBig);
        }
        if status == Status::StreamEnd {
            return Ok(true);
        }
        let room_left = out.len() < out.capacity();
        if input.is_empty() && room_left {
            return Ok(false);
        }
        if used == 0 && out.len() == out_before && room_left {
            return Err(InflateError::Corrupt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7692 §7.2.3.1: "Hello" in one fixed-Huffman block.
    const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

    fn agreement(no_takeover: bool, bits: Option<u8>) -> Agreement {
        Agreement {
            client_no_context_takeover: no_takeover,
            client_max_window_bits: bits,
            echo_server_max_window_bits: false,
        }
    }

    #[test]
    fn rfc7692_hello_inflates() {
        let mut inf = Inflater::new(&agreement(true, None));
        assert_eq!(inf.inflate(&HELLO, 100).unwrap(), b"Hello");
        // Sent again with the same (fresh) context.
        assert_eq!(inf.inflate(&HELLO, 100).unwrap(), b"Hello");
        assert_eq!(inf.idle_bytes(), 0);
    }

    #[test]
    fn rfc7692_other_encodings_of_hello() {
        let table: [&[u8]; 3] = [
            // §7.2.3.4: a final block (BFINAL=1); the byte after it is ignored.
            &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00],
            // §7.2.3.3: a stored (uncompressed) block.
            &[
                0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
            ],
            // §7.2.3.5: two blocks, the first with BFINAL=0, then a final one.
            &[
                0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
            ],
        ];
        for c in table {
            let mut inf = Inflater::new(&agreement(false, None));
            assert_eq!(inf.inflate(c, 100).unwrap(), b"Hello", "{c:x?}");
        }
    }

    #[test]
    fn rfc7692_context_takeover_second_message() {
        // §7.2.3.2: the second "Hello" refers back into the first.
        let mut inf = Inflater::new(&agreement(false, None));
        assert_eq!(inf.inflate(&HELLO, 100).unwrap(), b"Hello");
        let second = [0xf2, 0x00, 0x11, 0x00, 0x00];
        assert_eq!(inf.inflate(&second, 100).unwrap(), b"Hello");
        // Both messages are in the window now.
        assert_eq!(inf.history, b"HelloHello");
        // Without the history the reference points before the stream start,
        // which miniz fills with zeros instead of failing: the wrong text.
        let mut fresh = Inflater::new(&agreement(true, None));
        assert_eq!(fresh.inflate(&second, 100).unwrap(), b"H\0\0\0\0");
    }

    #[test]
    fn empty_message_is_a_single_zero_byte() {
        // Deflate of nothing: one stored-block header byte once the tail is cut.
        assert_eq!(compress(b""), [0x00]);
        let mut inf = Inflater::new(&agreement(true, None));
        assert_eq!(inf.inflate(&[0x00], 10).unwrap(), b"");
    }

    #[test]
    fn compress_round_trips_and_never_ends_with_the_tail() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let json = br#"{"type":"trade","data":[{"s":"AAPL","p":189.5,"v":100}]}"#.repeat(50);
        let table: [&[u8]; 5] = [b"Hello", b"a", &json, &big, &[0u8; 70_000]];
        for payload in table {
            let c = compress(payload);
            assert!(!c.ends_with(&SYNC_TAIL));
            let mut inf = Inflater::new(&agreement(true, None));
            assert_eq!(inf.inflate(&c, 1 << 20).unwrap(), payload);
        }
        assert!(compress(&json).len() < json.len() / 10);
    }

    #[test]
    fn compression_is_stateless_per_message() {
        let event = b"the same event, twice: the same event";
        let first = compress(event);
        // A message in between that the next could otherwise refer to.
        let other = compress(&event.repeat(3));
        let again = compress(event);
        assert_eq!(first, again);
        for c in [&first, &other, &again] {
            let mut inf = Inflater::new(&agreement(true, None));
            assert!(inf.inflate(c, 1000).is_ok_and(|p| p.starts_with(event)));
        }
    }

    #[test]
    fn history_is_capped_by_the_window_and_replayed() {
        // A client with a 9-bit window that keeps context: we keep 512 bytes.
        let ag = agreement(false, Some(9));
        let mut inf = Inflater::new(&ag);
        let first: Vec<u8> = (0..2000u32).map(|i| (i % 97) as u8).collect();
        let mut c = Compress::new(Compression::default(), false);
        let mut wire = Vec::with_capacity(8192);
        c.compress_vec(&first, &mut wire, FlushCompress::Sync)
            .unwrap();
        let cut = wire.len() - 4;
        assert_eq!(inf.inflate(&wire[..cut], 4096).unwrap(), first);
        assert_eq!(inf.history.len(), 512);
        // The next message refers into the previous one's tail.
        let second = &first[1500..1900];
        let mut wire2 = Vec::with_capacity(8192);
        c.compress_vec(second, &mut wire2, FlushCompress::Sync)
            .unwrap();
        let cut = wire2.len() - 4;
        assert!(wire2.len() < 40, "refers back: {} bytes", wire2.len());
        assert_eq!(inf.inflate(&wire2[..cut], 4096).unwrap(), second);
    }

    #[test]
    fn zip_bomb_stops_at_the_cap() {
        // 10 MiB of zeros at the best level: about 10 KiB on the wire.
        let zeros = vec![0u8; 10 << 20];
        let mut c = Compress::new(Compression::best(), false);
        let mut bomb = Vec::with_capacity(64 << 10);
        c.compress_vec(&zeros, &mut bomb, FlushCompress::Sync)
            .unwrap();
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        let mut inf = Inflater::new(&agreement(true, None));
        assert_eq!(inf.inflate(&bomb, 65_536), Err(InflateError::TooBig));
        assert_eq!(inf.inflate(&bomb, 10 << 20).unwrap().len(), 10 << 20);
        assert_eq!(
            inf.inflate(&compress(&[1; 100]), 99),
            Err(InflateError::TooBig)
        );
        assert_eq!(inf.inflate(&compress(&[1; 100]), 100).unwrap().len(), 100);
    }

    #[test]
    fn corrupt_streams_are_refused() {
        let table: [&[u8]; 3] = [
            &[0xff, 0xff, 0xff, 0xff],
            // Reserved block type 11.
            &[0x07],
            // Stored block whose length check fails.
            &[0x00, 0x05, 0x00, 0x00, 0x00, 1, 2, 3, 4, 5],
        ];
        for c in table {
            let mut inf = Inflater::new(&agreement(true, None));
            assert_eq!(inf.inflate(c, 100), Err(InflateError::Corrupt), "{c:x?}");
        }
    }

    #[test]
    fn negotiate_table() {
        let base = "permessage-deflate; server_no_context_takeover";
        let table: [(Option<&str>, Option<&str>); 22] = [
            (None, None),
            (Some(""), None),
            (Some("x-webkit-deflate-frame"), None),
            (Some("permessage-deflate"), Some(base)),
            (Some("PerMessage-Deflate "), Some(base)),
            // Chrome and Firefox.
            (
                Some("permessage-deflate; client_max_window_bits"),
                Some(base),
            ),
            (
                Some("permessage-deflate; client_no_context_takeover"),
                Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            ),
            (
                Some("permessage-deflate; client_max_window_bits=10"),
                Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=10"),
            ),
            (
                Some("permessage-deflate; client_max_window_bits=\"8\""),
                Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=8"),
            ),
            (
                Some("permessage-deflate; server_max_window_bits=15"),
                Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=15"),
            ),
            (Some("permessage-deflate;server_no_context_takeover"), Some(base)),
            // Declined: a window we cannot honour, then falls to the next offer.
            (Some("permessage-deflate; server_max_window_bits=10"), None),
            (
                Some("permessage-deflate; server_max_window_bits=8, permessage-deflate"),
                Some(base),
            ),
            // Declined: invalid values, unknown and duplicated parameters.
            (Some("permessage-deflate; server_max_window_bits"), None),
            (Some("permessage-deflate; client_max_window_bits=16"), None),
            (Some("permessage-deflate; client_max_window_bits=7"), None),
            (Some("permessage-deflate; client_max_window_bits=09"), None),
            (Some("permessage-deflate; client_max_window_bits=1x"), None),
            (Some("permessage-deflate; server_no_context_takeover=1"), None),
            (Some("permessage-deflate; foo"), None),
            (
                Some("permessage-deflate; client_no_context_takeover; client_no_context_takeover"),
                None,
            ),
            (
                Some("foo; a=\"x,y\", permessage-deflate; client_no_context_takeover; x, permessage-deflate; client_max_window_bits"),
                Some(base),
            ),
        ];
        for (offer, want) in table {
            let got = negotiate(offer).map(|a| a.response_header());
            assert_eq!(got.as_deref(), want, "{offer:?}");
        }
    }

    #[test]
    fn history_cap_follows_the_agreement() {
        let table = [
            (true, None, 0),
            (true, Some(10), 0),
            (false, None, 32_768),
            (false, Some(12), 4096),
            (false, Some(8), 512),
        ];
        for (no_takeover, bits, cap) in table {
            assert_eq!(agreement(no_takeover, bits).history_cap(), cap);
        }
    }
}
