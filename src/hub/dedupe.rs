//! Idempotent publish: publisher-chosen ids seen within a time window.
//!
//! Bounded twice: entries expire after `ttl_ms`, and at most `max` are kept
//! (past that the oldest goes first, and is counted). Since every entry
//! lives equally long, insertion order is expiry order and a queue finds
//! the expired ones without scanning.

use std::collections::{HashMap, VecDeque};

pub struct Dedupe {
    ttl_ms: u64,
    max: usize,
    /// Publisher id → (expires at, event id it produced).
    seen: HashMap<Box<str>, (u64, u64)>,
    /// (expires at, publisher id) in insertion order.
    order: VecDeque<(u64, Box<str>)>,
    /// Entries pushed out by the cap before they expired.
    pub evicted: u64,
}

impl Dedupe {
    pub fn new(ttl_ms: u64, max: usize) -> Dedupe {
        Dedupe {
            ttl_ms,
            max,
            seen: HashMap::new(),
            order: VecDeque::new(),
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The event id `key` produced, if it was published within the window.
    pub fn get(&mut self, key: &str, now_ms: u64) -> Option<u64> {
        self.expire(now_ms);
        self.seen.get(key).map(|&(_, id)| id)
    }

    /// Remembers that `key` produced `event_id`.
    pub fn insert(&mut self, key: &str, event_id: u64, now_ms: u64) {
        if self.max == 0 {
            return;
        }
        while self.seen.len() >= self.max {
            let Some((_, old)) = self.order.pop_front() else {
                break;
            };
            if self.seen.remove(&old).is_some() {
                self.evicted += 1;
            }
        }
        let expires = now_ms + self.ttl_ms;
        let key: Box<str> = key.into();
        self.seen.insert(key.clone(), (expires, event_id));
        self.order.push_back((expires, key));
    }

    /// Forgets every entry whose window has passed.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some((expires, _)) = self.order.front() {
            if *expires > now_ms {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                // A key re-inserted later has a later expiry: keep that one.
                if self.seen.get(&key).is_some_and(|&(e, _)| e <= now_ms) {
                    self.seen.remove(&key);
                }
            }
        }
        if self.order.is_empty() && self.order.capacity() > 1024 {
            self.order = VecDeque::new();
            self.seen.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_within_the_window_is_a_duplicate_and_after_it_is_not() {
        let mut d = Dedupe::new(1000, 10);
        assert_eq!(d.get("a", 0), None);
        d.insert("a", 7, 0);
        assert_eq!(d.get("a", 999), Some(7));
        assert_eq!(d.get("a", 1000), None);
        assert!(d.is_empty());
    }

    #[test]
    fn the_cap_pushes_out_the_oldest() {
        let mut d = Dedupe::new(1000, 2);
        d.insert("a", 1, 0);
        d.insert("b", 2, 1);
        d.insert("c", 3, 2);
        assert_eq!(
            (d.get("a", 3), d.get("b", 3), d.get("c", 3)),
            (None, Some(2), Some(3))
        );
        assert_eq!((d.len(), d.evicted), (2, 1));
    }

    #[test]
    fn reinserting_after_expiry_keeps_the_new_entry() {
        let mut d = Dedupe::new(10, 10);
        d.insert("a", 1, 0);
        assert_eq!(d.get("a", 10), None);
        d.insert("a", 2, 10);
        assert_eq!(d.get("a", 15), Some(2));
        assert_eq!(d.get("a", 20), None);
    }
}
