//! A hashed timer wheel for connection deadlines and heartbeats.
//!
//! Time is passed in as milliseconds since the reactor started; the wheel
//! never reads the clock. An entry names a connection by `(key, gen)` and a
//! [`TimerKind`]; it is not removed when its deadline stops mattering: the
//! handler re-checks the connection when the entry fires (a stale
//! generation or a changed state makes it a no-op, a deadline that moved
//! re-arms it). The reactor keeps at most one live entry per kind per
//! connection, so the wheel holds O(connections) entries.

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// A request (head and body), or the next request on a keep-alive
    /// connection, must have arrived.
    Request,
    /// SSE heartbeat; a WebSocket's idle and message deadlines.
    Heartbeat,
    /// A WebSocket's ping is due.
    Ping,
    /// A closing connection gets this long to take its last bytes.
    Linger,
    /// An SSE batch window closes: write what it collected.
    Batch,
    /// Queued bytes that made no write progress: the write deadline.
    Write,
    /// A stream's subscription token expires.
    Token,
}

/// 16 B: the wheel holds one or two per connection. The slab key is
/// kept as a `u32` (a reactor's slab holds far fewer connections) and
/// the deadline as the wheel turn it falls in: an entry's bucket gives
/// the tick within the turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    key: u32,
    pub gen: u32,
    turn: u32,
    pub kind: TimerKind,
}

impl Entry {
    /// The connection's slab key.
    pub fn key(&self) -> usize {
        self.key as usize
    }
}

pub struct TimerWheel {
    slots: Vec<Vec<Entry>>,
    tick_ms: u64,
    /// Last tick whose slot has been expired.
    done_tick: u64,
    len: usize,
}

impl TimerWheel {
    /// `slots` buckets of `tick_ms` each; deadlines further away than one
    /// turn wait in their bucket for later turns.
    pub fn new(slots: usize, tick_ms: u64) -> TimerWheel {
        TimerWheel {
            slots: (0..slots.max(1)).map(|_| Vec::new()).collect(),
            tick_ms: tick_ms.max(1),
            done_tick: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fires at or after `at_ms` (rounded up to the next tick).
    pub fn schedule(&mut self, at_ms: u64, key: usize, gen: u32, kind: TimerKind) {
        let at_tick = at_ms.div_ceil(self.tick_ms).max(self.done_tick + 1);
        let n = self.slots.len() as u64;
        debug_assert!(u32::try_from(key).is_ok(), "slab key {key} over u32");
        self.slots[(at_tick % n) as usize].push(Entry {
            key: key as u32,
            gen,
            turn: u32::try_from(at_tick / n).unwrap_or(u32::MAX),
            kind,
        });
        self.len += 1;
    }

    /// Takes out the entry `schedule(at_ms, key, gen, kind)` made, when it
    /// is still in the bucket of `at_ms` (one scheduled in the past went to
    /// the next tick instead and stays: it fires as a no-op). Searches
    /// from the bucket's end, where recent entries are.
    pub fn cancel(&mut self, at_ms: u64, key: usize, gen: u32, kind: TimerKind) -> bool {
        let at_tick = at_ms.div_ceil(self.tick_ms);
        let n = self.slots.len() as u64;
        let slot = &mut self.slots[(at_tick % n) as usize];
        let turn = u32::try_from(at_tick / n).unwrap_or(u32::MAX);
        let same = |e: &Entry| e.key() == key && e.gen == gen && e.kind == kind && e.turn == turn;
        match slot.iter().rposition(same) {
            Some(pos) => {
                slot.remove(pos);
                self.len -= 1;
                // A request timer is cancelled milliseconds after it was
                // armed, so its bucket often empties long before it comes
                // due: give the memory back now, not when it fires (an
                // idle stream would otherwise keep ~20 B of empty bucket).
                if slot.is_empty() {
                    *slot = Vec::new();
                }
                true
            }
            None => false,
        }
    }

    /// Moves every entry due at `now_ms` into `out`.
    pub fn expire(&mut self, now_ms: u64, out: &mut Vec<Entry>) {
        let now_tick = now_ms / self.tick_ms;
        if now_tick <= self.done_tick {
            return;
        }
        let n = self.slots.len() as u64;
        // One pass over the wheel visits every bucket, so a long stall
        // costs at most one turn.
        let first = self.done_tick + 1;
        let last = now_tick.min(self.done_tick + n);
        for tick in first..=last {
            let index = tick % n;
            let slot = &mut self.slots[index as usize];
            let before = slot.len();
            slot.retain(|e| {
                if u64::from(e.turn) * n + index <= now_tick {
                    out.push(*e);
                    false
                } else {
                    true
                }
            });
            self.len -= before - slot.len();
            // A burst of connections grows a bucket; give the memory back,
            // or every bucket keeps the largest burst it ever saw (and a
            // wheel whose entries have moved on, all 4,096 buckets).
            if slot.is_empty() {
                *slot = Vec::new();
            } else if slot.capacity() > 32 && slot.len() < slot.capacity() / 4 {
                slot.shrink_to(slot.len().max(8));
            }
        }
        self.done_tick = now_tick;
    }

    /// Milliseconds from `now_ms` until the next non-empty bucket comes due
    /// (an entry there may belong to a later turn: waking early is harmless).
    pub fn next_timeout_ms(&self, now_ms: u64) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let n = self.slots.len() as u64;
        (1..=n)
            .map(|i| self.done_tick + i)
            .find(|t| !self.slots[(t % n) as usize].is_empty())
            .map(|t| (t * self.tick_ms).saturating_sub(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(out: &[Entry]) -> Vec<usize> {
        out.iter().map(|e| e.key()).collect()
    }

    #[test]
    fn cancel_takes_out_only_the_named_entry() {
        let mut w = TimerWheel::new(8, 10);
        w.schedule(30, 1, 0, TimerKind::Request);
        w.schedule(30, 2, 0, TimerKind::Request);
        w.schedule(30, 1, 0, TimerKind::Heartbeat);
        assert!(!w.cancel(30, 1, 1, TimerKind::Request), "other generation");
        assert!(w.cancel(30, 1, 0, TimerKind::Request));
        assert!(!w.cancel(30, 1, 0, TimerKind::Request), "already gone");
        assert_eq!(w.len(), 2);
        let mut out = Vec::new();
        w.expire(30, &mut out);
        assert_eq!(keys(&out), vec![2, 1]);
        assert_eq!(out[1].kind, TimerKind::Heartbeat);
    }

    #[test]
    fn fires_in_the_right_tick_and_not_before() {
        let mut w = TimerWheel::new(8, 10);
        w.schedule(25, 1, 0, TimerKind::Request);
        w.schedule(10, 2, 0, TimerKind::Heartbeat);
        let mut out = vec![];
        w.expire(9, &mut out);
        assert!(out.is_empty());
        w.expire(10, &mut out);
        assert_eq!(keys(&out), vec![2]);
        out.clear();
        w.expire(29, &mut out);
        assert!(out.is_empty(), "25 rounds up to tick 3 = 30 ms");
        w.expire(30, &mut out);
        assert_eq!(keys(&out), vec![1]);
        assert!(w.is_empty());
    }

    #[test]
    fn deadlines_beyond_one_turn_wait_their_turn() {
        let mut w = TimerWheel::new(4, 10);
        w.schedule(100, 7, 3, TimerKind::Linger);
        let mut out = vec![];
        for now in (0..100).step_by(10) {
            w.expire(now, &mut out);
        }
        assert!(out.is_empty());
        w.expire(100, &mut out);
        assert_eq!(out[0].gen, 3);
    }

    #[test]
    fn a_long_stall_fires_everything_once() {
        let mut w = TimerWheel::new(4, 10);
        for k in 0..10 {
            w.schedule(k * 7, k as usize, 0, TimerKind::Request);
        }
        let mut out = vec![];
        w.expire(10_000, &mut out);
        assert_eq!(out.len(), 10);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn buckets_give_back_what_a_burst_took() {
        let mut w = TimerWheel::new(4, 10);
        for k in 0..10_000 {
            w.schedule(10, k, 0, TimerKind::Request);
        }
        let mut out = vec![];
        w.expire(10, &mut out);
        assert_eq!(out.len(), 10_000);
        assert!(
            w.slots.iter().all(|s| s.capacity() == 0),
            "bucket memory returned"
        );
    }

    #[test]
    fn a_bucket_emptied_by_cancels_gives_its_memory_back() {
        let mut w = TimerWheel::new(4, 10);
        for k in 0..100 {
            w.schedule(10, k, 0, TimerKind::Request);
        }
        for k in 0..100 {
            assert!(w.cancel(10, k, 0, TimerKind::Request));
        }
        assert!(w.is_empty());
        assert!(w.slots.iter().all(|s| s.capacity() == 0));
    }

    #[test]
    fn next_timeout_points_at_the_first_busy_bucket() {
        let mut w = TimerWheel::new(16, 10);
        assert_eq!(w.next_timeout_ms(0), None);
        w.schedule(55, 1, 0, TimerKind::Request);
        assert_eq!(w.next_timeout_ms(0), Some(60));
        assert_eq!(w.next_timeout_ms(58), Some(2));
        let mut out = vec![];
        w.expire(0, &mut out);
        w.schedule(5, 1, 0, TimerKind::Request);
        assert_eq!(w.next_timeout_ms(3), Some(7));
    }
}
