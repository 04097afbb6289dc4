//! Event ids as clients see them, one format per mode.
//!
//! Embedded mode counts: an id is a plain number (`1732412345678901`).
//! Redis mode uses the Redis stream id every node reads back (`ms-n`,
//! e.g. `1732412345678-3`), which the publish script hands out from one
//! cluster-wide sequence; inside redix it is packed into a `u64` as
//! `ms << 20 | n`, so ordering and comparisons stay plain integer ones.
//!
//! An id is read in its mode's format only ([`Format::parse`]): ids from
//! Redis and cursors clients send back (`Last-Event-ID`, `?lastEventId=`,
//! WebSocket `since`) alike; a cursor may also be `0`, "from the start". A number in Redis mode, or a stream id in
//! embedded mode, is no id redix gave out: taken as one it would sit far
//! from every real id and pin a channel (or a client) there.
//!
//! Stream ids from the year 2500 on are refused as well (44 bits of
//! milliseconds would reach into 2527): no clock hands them out, and a
//! packed id then stays below `u64::MAX`, so `id + 1` cannot overflow.

/// Bits of the per-millisecond part of a packed stream id.
pub const SEQ_BITS: u32 = 20;
/// Largest per-millisecond sequence the publish script hands out.
pub const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;
/// Largest millisecond timestamp of a stream id: 2499-12-31T23:59:59.999Z
/// (below `u64::MAX >> SEQ_BITS`, so packing never loses bits).
pub const MAX_MS: u64 = 16_725_225_599_999;
const _: () = assert!(MAX_MS < u64::MAX >> SEQ_BITS);

/// How ids are written; a hub uses one format for its whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Embedded mode: a decimal number.
    Decimal,
    /// Redis mode: a stream id `ms-n`.
    Stream,
}

impl Format {
    pub fn of_redis_mode(redis: bool) -> Format {
        match redis {
            true => Format::Stream,
            false => Format::Decimal,
        }
    }

    /// Reads an id written in this format; `None` for anything else.
    pub fn parse(self, s: &str) -> Option<u64> {
        match self {
            Format::Decimal => parse_decimal(s),
            Format::Stream => parse_stream(s),
        }
    }

    /// Reads a client's resume point: an id in this format, or `0` for
    /// "from the start" in either (the zero id, which pins nothing).
    pub fn parse_cursor(self, s: &str) -> Option<u64> {
        match s {
            "0" => Some(0),
            _ => self.parse(s),
        }
    }
}

/// Packs the stream id `ms-n`; `None` when it does not fit.
pub fn pack(ms: u64, n: u64) -> Option<u64> {
    (ms <= MAX_MS && n <= MAX_SEQ).then_some(ms << SEQ_BITS | n)
}

/// The stream id `ms-n` of a packed id.
pub fn stream_id(id: u64) -> String {
    format!("{}-{}", id >> SEQ_BITS, id & MAX_SEQ)
}

/// ASCII digits only, 1 to 20 of them (a `u64` has at most 20).
fn digits(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Reads a stream id `ms-n` (Redis mode).
pub fn parse_stream(s: &str) -> Option<u64> {
    let (ms, n) = s.split_once('-')?;
    if !digits(ms) || !digits(n) {
        return None;
    }
    pack(ms.parse().ok()?, n.parse().ok()?)
}

/// Reads a decimal id (embedded mode).
pub fn parse_decimal(s: &str) -> Option<u64> {
    digits(s).then(|| s.parse().ok()).flatten()
}

/// Reads an id in either format, for a caller that does not know the
/// mode; prefer [`Format::parse`].
pub fn parse(s: &str) -> Option<u64> {
    parse_stream(s).or_else(|| parse_decimal(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_round_trip_and_keep_their_order() {
        let a = parse_stream("1732412345678-3").unwrap();
        let b = parse_stream("1732412345678-4").unwrap();
        let c = parse_stream("1732412345679-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(stream_id(a), "1732412345678-3");
        assert_eq!(parse_decimal("42"), Some(42));
    }

    #[test]
    fn each_format_reads_only_its_own_ids() {
        let cases = [
            ("1732412345678-3", Some(1732412345678 << SEQ_BITS | 3), None),
            ("42", None, Some(42)),
            ("18446744073709551615", None, Some(u64::MAX)),
            ("18446744073709551616", None, None),
            (
                "16725225599999-1048575",
                Some(MAX_MS << SEQ_BITS | MAX_SEQ),
                None,
            ),
            ("16725225600000-0", None, None),
            ("17592186044415-1048575", None, None),
            ("1-1048576", None, None),
        ];
        for (s, stream, decimal) in cases {
            assert_eq!(Format::Stream.parse(s), stream, "{s:?}");
            assert_eq!(Format::Decimal.parse(s), decimal, "{s:?}");
        }
        assert_eq!(Format::Stream.parse("0"), None);
        assert_eq!(Format::Stream.parse_cursor("0"), Some(0));
        assert_eq!(Format::Stream.parse_cursor("00"), None);
        assert_eq!(Format::Stream.parse_cursor("1-2"), Some(1 << SEQ_BITS | 2));
        assert_eq!(Format::Decimal.parse_cursor("0"), Some(0));
        assert_eq!(Format::Decimal.parse_cursor("1-2"), None);
        assert_eq!(Format::of_redis_mode(true), Format::Stream);
        assert_eq!(Format::of_redis_mode(false), Format::Decimal);
    }

    #[test]
    fn the_largest_stream_id_packs_without_loss_and_leaves_room_to_count() {
        let max = pack(MAX_MS, MAX_SEQ).unwrap();
        assert_eq!(stream_id(max), format!("{MAX_MS}-{MAX_SEQ}"));
        assert!(max.checked_add(1 << SEQ_BITS).is_some());
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1-2-3",
            "x",
            "1-x",
            " 1",
            "1-1048576",
            "+1",
            "1 ",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse("99999999999999999999999"), None);
    }
}
