//! Per-channel history: the recent events a resuming client is replayed
//! from, bounded by count and age.
//!
//! Time is passed in (milliseconds on the hub's clock). `trimmed_to` is the
//! highest id that left the history, so a resume point older than the
//! history is detected (and answered with a reset) instead of becoming a
//! silent gap.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Event;

/// Bounds of one channel's history; `max_events == 0` keeps none.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub max_events: usize,
    pub max_age_ms: u64,
}

#[derive(Debug, Default)]
pub struct History {
    /// (published at, event), oldest first.
    events: VecDeque<(u64, Arc<Event>)>,
    /// Highest id removed from the history; 0 when nothing was.
    trimmed_to: u64,
    bytes: usize,
}

/// What a history lost or gained, for the hub's totals.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    pub events: isize,
    pub bytes: isize,
}

impl Delta {
    pub fn add(&mut self, other: Delta) {
        self.events += other.events;
        self.bytes += other.bytes;
    }
}

/// Bytes an event holds in memory (its encodings).
pub fn event_bytes(ev: &Event) -> usize {
    ev.sse.len() + ev.ws.len() + std::mem::size_of::<Event>()
}

impl History {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn trimmed_to(&self) -> u64 {
        self.trimmed_to
    }

    /// The newest event kept.
    pub fn latest(&self) -> Option<Arc<Event>> {
        self.events.back().map(|(_, ev)| ev.clone())
    }

    /// The id of the oldest event kept.
    pub fn oldest_id(&self) -> Option<u64> {
        self.events.front().map(|(_, ev)| ev.id)
    }

    /// What the history holds, as a delta that removes it all.
    pub fn removal(&self) -> Delta {
        Delta {
            events: -(self.events.len() as isize),
            bytes: -(self.bytes as isize),
        }
    }

    /// Drops the oldest event (the global byte cap evicts it).
    pub fn evict_oldest(&mut self) -> Delta {
        let delta = self.pop_front();
        if self.events.is_empty() {
            self.events = VecDeque::new();
        }
        delta
    }

    /// Ids up to `id` are known to be gone (a Redis stream trimmed them):
    /// a cursor below it gets a reset.
    pub fn raise_floor(&mut self, id: u64) {
        self.trimmed_to = self.trimmed_to.max(id);
    }

    /// Appends an event, then trims to the limits.
    pub fn push(&mut self, ev: Arc<Event>, now_ms: u64, limits: HistoryLimits) -> Delta {
        let mut delta = Delta::default();
        if limits.max_events == 0 {
            self.trimmed_to = self.trimmed_to.max(ev.id);
            return delta;
        }
        let size = event_bytes(&ev);
        self.events.push_back((now_ms, ev));
        self.bytes += size;
        delta.events += 1;
        delta.bytes += size as isize;
        while self.events.len() > limits.max_events {
            delta.add(self.pop_front());
        }
        delta.add(self.expire(now_ms, limits));
        delta
    }

    /// Drops events older than the age limit.
    pub fn expire(&mut self, now_ms: u64, limits: HistoryLimits) -> Delta {
        let mut delta = Delta::default();
        while let Some((at, _)) = self.events.front() {
            if now_ms.saturating_sub(*at) < limits.max_age_ms {
                break;
            }
            delta.add(self.pop_front());
        }
        if self.events.is_empty() {
            // Give a burst's ring back.
            self.events = VecDeque::new();
        }
        delta
    }

    fn pop_front(&mut self) -> Delta {
        match self.events.pop_front() {
            Some((_, ev)) => {
                let size = event_bytes(&ev);
                self.bytes -= size;
                self.trimmed_to = self.trimmed_to.max(ev.id);
                Delta {
                    events: -1,
                    bytes: -(size as isize),
                }
            }
            None => Delta::default(),
        }
    }

    /// Appends the events after `cursor` to `out`; false when some event
    /// after `cursor` has already left the history (the caller must reset).
    pub fn since(&self, cursor: u64, out: &mut Vec<Arc<Event>>) -> bool {
        let start = self.events.partition_point(|(_, ev)| ev.id <= cursor);
        out.extend(self.events.range(start..).map(|(_, ev)| ev.clone()));
        cursor >= self.trimmed_to
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HistoryLimits = HistoryLimits {
        max_events: 3,
        max_age_ms: 1000,
    };

    fn ev(id: u64) -> Arc<Event> {
        Arc::new(Event::new(id, Arc::from("c"), "1"))
    }

    fn ids(h: &History, cursor: u64) -> (Vec<u64>, bool) {
        let mut out = vec![];
        let complete = h.since(cursor, &mut out);
        (out.iter().map(|e| e.id).collect(), complete)
    }

    #[test]
    fn keeps_the_last_n_and_knows_what_it_lost() {
        let mut h = History::default();
        for id in [10, 11, 12, 13, 14] {
            h.push(ev(id), 0, LIMITS);
        }
        assert_eq!(ids(&h, 0), (vec![12, 13, 14], false));
        assert_eq!(ids(&h, 11), (vec![12, 13, 14], true));
        assert_eq!(ids(&h, 13), (vec![14], true));
        assert_eq!(ids(&h, 99), (vec![], true));
    }

    #[test]
    fn expires_by_age_and_accounts_bytes() {
        let mut h = History::default();
        let d1 = h.push(ev(1), 0, LIMITS);
        let d2 = h.push(ev(2), 600, LIMITS);
        assert_eq!((d1.events, d2.events), (1, 1));
        let d = h.expire(1000, LIMITS);
        assert_eq!(d.events, -1);
        assert_eq!(ids(&h, 0), (vec![2], false));
        let d = h.expire(1600, LIMITS);
        assert_eq!(d.events, -1);
        assert!(h.is_empty());
        assert_eq!(h.bytes, 0);
        assert_eq!(d.bytes + d2.bytes, 0);
        assert_eq!(h.trimmed_to(), 2);
    }

    #[test]
    fn no_history_means_every_resume_is_a_reset() {
        let mut h = History::default();
        let off = HistoryLimits {
            max_events: 0,
            max_age_ms: 1000,
        };
        assert_eq!(h.push(ev(5), 0, off), Delta::default());
        assert_eq!(ids(&h, 4), (vec![], false));
        assert_eq!(ids(&h, 5), (vec![], true));
    }
}
