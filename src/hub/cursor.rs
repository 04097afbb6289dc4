//! The composite SSE cursor of Redis Cluster mode: one `id:` that holds
//! the position of every channel of a stream.
//!
//! In cluster mode each channel has its own id sequence on its own shard,
//! so one event id cannot say where a stream over several channels stands.
//! Such a stream's events carry instead, in `id:`, the position of every
//! channel after that event (`EventSource` keeps only the last id):
//!
//! ```text
//! cursor = "c1" tag "." base *("." pos)     ; one pos per channel
//! pos    = "" | delta | delta "~" seq       ; "" = no event yet (0)
//! ```
//!
//! - Numbers are written in base 64 with the digits
//!   `0-9 A-Z a-z - _` (most significant first, no leading `0`), so a
//!   cursor uses only characters that need no escaping in a header or a
//!   query string, and cannot be mistaken for a plain id (those start
//!   with a digit).
//! - `tag`: four digits, 24 bits of FNV-1a over the channel names in the
//!   stream's canonical order (sorted bytewise) joined by `,`: a cursor of
//!   another channel set is recognised, not misapplied.
//! - Positions follow the canonical order. A position is a Redis stream id
//!   `ms-seq` ([`super::ids`], packed); `base` is the largest `ms` among
//!   them and each position is written as `base - ms` plus `~seq` when
//!   `seq` is not 0. Channels that move together cost 1 to 3 bytes.
//!
//! At most `8 + 14 × channels` bytes ([`max_len`]); 32 channels (the
//! default `sse.max_channels`) fit in 456.
//!
//! Also here: [`Resume`], where a subscription resumes (one id, or a
//! position per channel read from a composite cursor).
//!
//! No sockets and no clock: encoding writes into a caller's buffer.

use std::fmt;
use std::sync::Arc;

use bytes::BufMut;

use super::ids::{MAX_MS, MAX_SEQ, SEQ_BITS};

/// Where a subscription resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// No cursor: live from now on.
    Fresh,
    /// After this id, on every channel (`0`: all the history there is).
    At(u64),
    /// After its own position on each channel, in the order subscribed
    /// (0: all the history there is).
    Each(Box<[u64]>),
}

impl Resume {
    /// The cursor of the `i`th channel subscribed.
    pub fn of(&self, i: usize) -> Option<u64> {
        match self {
            Resume::Fresh => None,
            Resume::At(id) => Some(*id),
            Resume::Each(each) => Some(each.get(i).copied().unwrap_or(0)),
        }
    }
}

/// What starts every composite cursor: its format and version.
pub const PREFIX: &str = "c1";

/// The 64 digits, by value.
const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";

/// Digits of the channel-set tag.
const TAG_DIGITS: usize = 4;

/// Longest cursor of a stream over `channels` channels: the prefix, the
/// tag, `.` and the base (8 digits hold 48 bits), then per channel `.`, a
/// delta (8 digits), `~` and a sequence (4 digits hold 24 bits); the
/// newest position's delta is 0, one digit.
pub const fn max_len(channels: usize) -> usize {
    (PREFIX.len() + TAG_DIGITS + 1 + 8 + channels * 14).saturating_sub(7)
}

/// Why a cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorError {
    /// Not a composite cursor at all (a plain id, or another prefix).
    NotComposite,
    /// Longer than any cursor of this many channels.
    TooLong { max: usize },
    /// A character outside the digits, `.` and `~`.
    BadChar(char),
    /// Made for another set of channels.
    OtherChannels,
    /// Positions for another number of channels.
    Count { expected: usize, got: usize },
    /// A number is missing, has a leading 0, or is out of range.
    BadNumber,
}

impl fmt::Display for CursorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CursorError::NotComposite => write!(
                f,
                "is not a composite cursor: with Redis Cluster a stream over several channels resumes from the `{PREFIX}…` id its events carry (each channel has its own ids), or from 0"
            ),
            CursorError::TooLong { max } => {
                write!(f, "is too long: a cursor of this stream has at most {max} bytes")
            }
            CursorError::BadChar(c) => write!(
                f,
                "has a character {c:?} no cursor holds (0-9 A-Z a-z - _ . ~)"
            ),
            CursorError::OtherChannels => write!(
                f,
                "was given out for another set of channels: resume with the channels it was made for, or without a cursor"
            ),
            CursorError::Count { expected, got } => write!(
                f,
                "holds {got} positions; this stream has {expected} channels"
            ),
            CursorError::BadNumber => {
                write!(f, "has a malformed position (empty, leading 0, or out of range)")
            }
        }
    }
}

/// Whether `text` is meant as a composite cursor (as opposed to a plain
/// id): it starts with a letter.
pub fn looks_composite(text: &str) -> bool {
    text.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
}

/// The tag of a channel set, given in canonical (sorted) order.
pub fn tag(channels: &[Arc<str>]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, name) in channels.iter().enumerate() {
        let sep: &[u8] = if i == 0 { b"" } else { b"," };
        for b in sep.iter().chain(name.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    (h & 0xff_ffff) as u32
}

/// Writes `n` in base 64 into `out`.
fn put_number(out: &mut impl BufMut, mut n: u64) {
    let mut buf = [0u8; 11];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(n & 63) as usize];
        n >>= 6;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&buf[i..]);
}

/// Writes the cursor of `positions` (canonical order, packed stream ids,
/// 0 for none) for the channel set `tag`; `position(i)` gives each.
pub fn write(out: &mut impl BufMut, tag: u32, n: usize, position: impl Fn(usize) -> u64) {
    out.put_slice(PREFIX.as_bytes());
    for shift in [18, 12, 6, 0] {
        out.put_u8(DIGITS[((tag >> shift) & 63) as usize]);
    }
    let base = (0..n).map(|i| position(i) >> SEQ_BITS).max().unwrap_or(0);
    out.put_u8(b'.');
    put_number(out, base);
    for i in 0..n {
        out.put_u8(b'.');
        let p = position(i);
        if p == 0 {
            continue;
        }
        put_number(out, base - (p >> SEQ_BITS));
        if p & MAX_SEQ != 0 {
            out.put_u8(b'~');
            put_number(out, p & MAX_SEQ);
        }
    }
}

/// The cursor of `positions` as text.
pub fn text(tag: u32, positions: &[u64]) -> String {
    let mut out = Vec::with_capacity(max_len(positions.len()));
    write(&mut out, tag, positions.len(), |i| positions[i]);
    String::from_utf8_lossy(&out).into_owned()
}

fn digit_value(b: u8) -> Option<u64> {
    DIGITS.iter().position(|d| *d == b).map(|v| v as u64)
}

/// Reads one number: 1 to `max_digits` digits, no leading 0.
fn read_number(s: &str, max_digits: usize) -> Result<u64, CursorError> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > max_digits || b.len() > 1 && b[0] == b'0' {
        return Err(CursorError::BadNumber);
    }
    let mut n: u64 = 0;
    for &c in b {
        let v = digit_value(c).ok_or(CursorError::BadChar(c as char))?;
        n = n.checked_mul(64).ok_or(CursorError::BadNumber)? | v;
    }
    Ok(n)
}

/// Reads one position relative to `base`: `""`, `delta` or `delta~seq`.
fn read_position(s: &str, base: u64) -> Result<u64, CursorError> {
    if s.is_empty() {
        return Ok(0);
    }
    let (delta, seq) = match s.split_once('~') {
        Some((d, q)) => (read_number(d, 8)?, read_number(q, 4)?),
        None => (read_number(s, 8)?, 0),
    };
    let had_seq = s.contains('~');
    if delta > base || seq > MAX_SEQ || had_seq && seq == 0 {
        return Err(CursorError::BadNumber);
    }
    let packed = (base - delta) << SEQ_BITS | seq;
    // A position "0-0" would read back as "none".
    match packed {
        0 => Err(CursorError::BadNumber),
        p => Ok(p),
    }
}

/// Reads a cursor for the stream over `channels` (canonical order): the
/// position of each, 0 for none. Strict: only text [`write()`] produces.
pub fn parse(text: &str, channels: &[Arc<str>]) -> Result<Box<[u64]>, CursorError> {
    let max = max_len(channels.len());
    let Some(rest) = text.strip_prefix(PREFIX) else {
        return Err(CursorError::NotComposite);
    };
    if text.len() > max {
        return Err(CursorError::TooLong { max });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.~".contains(c);
    if let Some(c) = text.chars().find(|c| !allowed(*c)) {
        return Err(CursorError::BadChar(c));
    }
    let (tag_text, rest) = rest.split_at(rest.len().min(TAG_DIGITS));
    let mut parts = rest.split('.');
    if parts.next() != Some("") {
        return Err(CursorError::BadNumber);
    }
    let base = read_number(parts.next().ok_or(CursorError::BadNumber)?, 8)?;
    let positions: Vec<&str> = parts.collect();
    if positions.len() != channels.len() {
        return Err(CursorError::Count {
            expected: channels.len(),
            got: positions.len(),
        });
    }
    let tag_value = match tag_text.len() == TAG_DIGITS {
        true => tag_text
            .bytes()
            .try_fold(0u32, |t, b| digit_value(b).map(|v| t << 6 | v as u32)),
        false => None,
    };
    if tag_value != Some(tag(channels)) {
        return Err(CursorError::OtherChannels);
    }
    if base > MAX_MS {
        return Err(CursorError::BadNumber);
    }
    let out = positions
        .iter()
        .map(|p| read_position(p, base))
        .collect::<Result<Box<[u64]>, _>>()?;
    // The base is the newest position's: anything else is not our text.
    let newest = out.iter().map(|p| p >> SEQ_BITS).max().unwrap_or(0);
    match newest == base {
        true => Ok(out),
        false => Err(CursorError::BadNumber),
    }
}

#[cfg(test)]
mod tests;
