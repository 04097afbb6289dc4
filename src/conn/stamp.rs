//! Readings of the reactor clock kept in 32 bits, for the clocks every
//! connection carries (four in its slot, two in a WebSocket's state): the
//! slot of every connection is as large as what it holds.

/// A reading of the reactor clock (milliseconds since the reactor
/// started) in 32 bits, or "never". It wraps every 2^32 ms (49.7 days),
/// so only the time *since* it is read ([`Stamp::since`]); that is exact
/// while less than 49.7 days have passed. The deadlines it serves (write
/// stall, cold queue, WebSocket ping and idle) are far shorter; only the
/// age and idle time `/debug/connections` shows for a connection older
/// than that come out modulo 49.7 days.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp(u32);

impl Stamp {
    pub const NEVER: Stamp = Stamp(0);

    /// The reading `now_ms`. A reading whose low 32 bits are 0 is kept
    /// as 1 ms earlier, so it is never taken for "never" (and a later
    /// reading never comes out as before it).
    pub fn at(now_ms: u64) -> Stamp {
        match now_ms as u32 {
            0 => Stamp(u32::MAX),
            low => Stamp(low),
        }
    }

    pub fn is_never(self) -> bool {
        self.0 == 0
    }

    /// Milliseconds from this reading to `now_ms`; `None` for "never".
    pub fn since(self, now_ms: u64) -> Option<u64> {
        (self.0 != 0).then(|| u64::from((now_ms as u32).wrapping_sub(self.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_since_a_reading_survives_the_wrap() {
        assert_eq!(Stamp::NEVER.since(5), None);
        assert!(Stamp::default().is_never());
        assert_eq!(Stamp::at(1_000).since(31_000), Some(30_000));
        assert_eq!(Stamp::at(0).since(0), Some(1), "0 kept as 1 ms earlier");
        assert_eq!(Stamp::at(1 << 32).since((1 << 32) + 4), Some(5));
        let before_wrap = u64::from(u32::MAX) - 10;
        assert_eq!(Stamp::at(before_wrap).since(before_wrap + 30), Some(30));
        let later = 7 * (1u64 << 32) + 123;
        assert_eq!(Stamp::at(later).since(later + 5), Some(5));
    }
}
