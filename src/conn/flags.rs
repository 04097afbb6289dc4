//! A connection's yes/no states, packed in one byte of its slot.

/// One of a connection's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// The last write would have blocked: wait for a writable event.
    Blocked = 1,
    /// Queued in the reactor's flush list this turn.
    Dirty = 2,
    /// Queued in the reactor's list of connections to read again (a read
    /// budget ran out with bytes left).
    ReadQueued = 4,
    /// A write-deadline timer is live.
    WriteArmed = 8,
}

/// The set of a connection's [`Flag`]s (four `bool`s took 4 B).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u8);

impl Flags {
    pub fn has(self, flag: Flag) -> bool {
        self.0 & flag as u8 != 0
    }

    pub fn set(&mut self, flag: Flag, on: bool) {
        match on {
            true => self.0 |= flag as u8,
            false => self.0 &= !(flag as u8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_independent() {
        let mut f = Flags::default();
        f.set(Flag::Dirty, true);
        f.set(Flag::WriteArmed, true);
        assert!(f.has(Flag::Dirty) && f.has(Flag::WriteArmed));
        assert!(!f.has(Flag::Blocked) && !f.has(Flag::ReadQueued));
        f.set(Flag::Dirty, false);
        assert!(!f.has(Flag::Dirty) && f.has(Flag::WriteArmed));
    }
}
