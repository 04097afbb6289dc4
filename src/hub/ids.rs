//! Event ids as clients see them.
//!
//! Embedded mode counts: an id is a plain number (`1732412345678901`).
//! Redis mode uses the Redis stream id every node reads back (`ms-n`,
//! e.g. `1732412345678-3`), which the publish script hands out from one
//! cluster-wide sequence; inside redix it is packed into a `u64` as
//! `ms << 20 | n`, so ordering and comparisons stay plain integer ones.

/// Bits of the per-millisecond part of a packed stream id.
pub const SEQ_BITS: u32 = 20;
/// Largest per-millisecond sequence the publish script hands out.
pub const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;
/// Largest millisecond timestamp a packed id holds (year 559,444).
const MAX_MS: u64 = u64::MAX >> SEQ_BITS;

/// Packs the stream id `ms-n`; `None` when it does not fit.
pub fn pack(ms: u64, n: u64) -> Option<u64> {
    (ms <= MAX_MS && n <= MAX_SEQ).then_some(ms << SEQ_BITS | n)
}

/// The stream id `ms-n` of a packed id.
pub fn stream_id(id: u64) -> String {
    format!("{}-{}", id >> SEQ_BITS, id & MAX_SEQ)
}

/// Reads an id a client sends back: a stream id `ms-n` or a plain number.
pub fn parse(s: &str) -> Option<u64> {
    let digits = |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
    match s.split_once('-') {
        Some((ms, n)) if digits(ms) && digits(n) => pack(ms.parse().ok()?, n.parse().ok()?),
        Some(_) => None,
        None if digits(s) => s.parse().ok(),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_round_trip_and_keep_their_order() {
        let a = parse("1732412345678-3").unwrap();
        let b = parse("1732412345678-4").unwrap();
        let c = parse("1732412345679-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(stream_id(a), "1732412345678-3");
        assert_eq!(parse("42"), Some(42));
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in ["", "-", "1-", "-1", "1-2-3", "x", "1-x", " 1", "1-1048576"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(parse("99999999999999999999999"), None);
    }
}
