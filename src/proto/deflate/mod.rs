//! permessage-deflate (RFC 7692) on flate2's raw deflate (zlib-rs backend).
//!
//! Invariants:
//! - No context is taken over in either direction ([`negotiate`] answers
//!   every offer with `server_no_context_takeover` and
//!   `client_no_context_takeover`). A message's compressed bytes depend on
//!   that message alone, so one event compressed once is valid for every
//!   subscriber with the same window ([`compress`] keeps no state between
//!   messages), and no connection holds a deflate window while idle.
//! - A client's `server_max_window_bits=N` (8..=15) is honoured: what we
//!   send it never refers more than 2^N bytes back (see [`WindowBits`] for
//!   N = 8, which zlib compresses with 9 bits).
//! - Client messages are inflated by a fresh inflater that lives for one
//!   message ([`inflate`]); a reference to an earlier message is corrupt
//!   data (close 1007), as the client agreed not to make one.
//! - Inflated output is capped while it is produced, so a small zip bomb is
//!   stopped at the cap (close 1009), never allocated in full.

mod negotiate;
#[cfg(test)]
mod strict;
#[cfg(test)]
mod tests;

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub use negotiate::{negotiate, Agreement, EXTENSION};

/// The empty stored block a sync flush ends with; RFC 7692 §7.2.1 strips it
/// from every message on the wire and the receiver appends it back.
pub const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// An LZ77 window size in bits, as `server_max_window_bits` states it:
/// 8..=15, the window being 2^bits bytes.
///
/// zlib's deflate has no 8-bit window (asked for one, it uses 9), and
/// RFC 7692 §7.1.2.1 binds the answer to "the same or smaller value as the
/// offer", so answering 9 to an offer of 8 is not allowed. But zlib never
/// refers further back than the window less its 262-byte lookahead
/// (`MAX_DIST`): 250 bytes with 9 bits, inside the 256 a client told 8
/// keeps. So an offer of 8 is accepted as 8 and compressed with 9 bits; the
/// round-trip tests inflate it with a real 8-bit window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WindowBits(u8);

impl WindowBits {
    /// 32 KiB: deflate's largest window, and what a client that does not
    /// say otherwise can read.
    pub const MAX: WindowBits = WindowBits(15);
    /// How many distinct compressor windows there are (9..=15).
    pub const COMPRESSORS: usize = 7;

    /// `bits` when it is a valid window size (8..=15).
    pub fn new(bits: u8) -> Option<WindowBits> {
        (8..=15).contains(&bits).then_some(WindowBits(bits))
    }

    /// A parameter value: decimal 8..=15 without leading zeros (RFC 7692 §7.1.2).
    pub fn parse(v: &str) -> Option<WindowBits> {
        if v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        WindowBits::new(v.parse().ok()?)
    }

    pub fn get(self) -> u8 {
        self.0
    }

    /// The window the compressor runs with: 9..=15 (8 is 9, see above).
    /// Two windows with the same compressor produce the same bytes.
    pub fn compressor_bits(self) -> u8 {
        self.0.max(9)
    }

    /// `compressor_bits` as an index into `0..COMPRESSORS`.
    pub fn compressor_index(self) -> usize {
        usize::from(self.compressor_bits() - 9)
    }
}

thread_local! {
    // A zlib-rs compressor is a few hundred KiB (the hash table does not
    // shrink with the window): one per thread and window actually used,
    // never per connection. Level 2, not 1: zlib's level 1 only has fixed
    // Huffman codes; on a 182-byte SSE event it sends 153 bytes in 1.5 µs
    // against level 2's 136 bytes in 5 µs (what miniz's level 1 sent, in
    // about 7 µs), and on 10 KiB of JSON level 2 is both smaller (2.3 KiB
    // against 3.4) and faster (22 µs against 30). Narrow windows cost more:
    // zlib slides its whole hash table every 2^N bytes (about 100 µs for
    // those 10 KiB at 9 bits), once per event and window.
    static COMPRESSORS: RefCell<[Option<Compress>; WindowBits::COMPRESSORS]> =
        const { RefCell::new([None, None, None, None, None, None, None]) };
}

/// Compresses one whole message for a frame with RSV1 set: raw deflate
/// with at most a `window` window, sync-flushed, trailing `00 00 ff ff`
/// removed (RFC 7692 §7.2.1).
///
/// The output never refers to data before the message: the thread's
/// compressor ends every message with a full flush (`Z_FULL_FLUSH`), which
/// byte-aligns the stream like a sync flush and also forgets the window, so
/// the next message starts as if from a fresh compressor. (A reset would
/// clear the same hash table: no cheaper.)
///
/// Sending small messages uncompressed (RSV1 clear) is always allowed, so
/// callers may skip them.
pub fn compress(payload: &[u8], window: WindowBits) -> Vec<u8> {
    if payload.is_empty() {
        // An empty stored block (`00 00 00 ff ff`) minus the tail.
        return vec![0x00];
    }
    COMPRESSORS.with(|all| {
        let mut all = all.borrow_mut();
        let c = all[window.compressor_index()].get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(2), false, window.compressor_bits())
        });
        let mut out = full_flush(c, payload);
        if out.ends_with(&SYNC_TAIL) {
            out.truncate(out.len() - SYNC_TAIL.len());
        }
        out
    })
}

/// Deflates all of `payload` and full-flushes.
fn full_flush(c: &mut Compress, payload: &[u8]) -> Vec<u8> {
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
    out
}

/// Why a compressed client message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// Inflated output over the cap: close 1009.
    TooBig,
    /// Not a valid deflate stream, or one that refers to an earlier
    /// message: close 1007.
    Corrupt,
}

/// Inflates one client message's payload (RSV1 frames joined, tail
/// stripped), refusing output over `max_len` bytes. The inflater (15-bit
/// window, which reads any smaller one) lives for this message only.
pub fn inflate(compressed: &[u8], max_len: usize) -> Result<Vec<u8>, InflateError> {
    let mut d = Decompress::new(false);
    let mut out = Vec::new();
    if !feed(&mut d, compressed, &mut out, max_len)? {
        feed(&mut d, &SYNC_TAIL, &mut out, max_len)?;
    }
    Ok(out)
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
