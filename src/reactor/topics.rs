//! The keys of one channel's local subscribers.
//!
//! Most channels of a many-channel workload have a single subscriber on a
//! reactor; a `HashSet` for each would allocate its table (~48 B) per
//! channel. One key is kept inline; a second turns it into a set, and the
//! set turns back into one key when it shrinks to one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Slab keys as `u32`: a reactor's slab stays far below.
#[derive(Debug)]
pub enum Subscribers {
    One(u32),
    Many(HashSet<u32>),
}

impl Subscribers {
    pub fn new(key: usize) -> Subscribers {
        Subscribers::One(key as u32)
    }

    pub fn insert(&mut self, key: usize) {
        let key = key as u32;
        match self {
            Subscribers::One(k) if *k == key => {}
            Subscribers::One(k) => *self = Subscribers::Many(HashSet::from([*k, key])),
            Subscribers::Many(set) => {
                set.insert(key);
            }
        }
    }

    /// Removes `key`; true when no subscriber is left (the caller then
    /// drops the entry).
    pub fn remove(&mut self, key: usize) -> bool {
        let key = key as u32;
        match self {
            Subscribers::One(k) => *k == key,
            Subscribers::Many(set) => {
                set.remove(&key);
                if let (1, Some(&last)) = (set.len(), set.iter().next()) {
                    *self = Subscribers::One(last);
                }
                matches!(self, Subscribers::Many(set) if set.is_empty())
            }
        }
    }

    /// The keys, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let (one, many) = match self {
            Subscribers::One(k) => (Some(*k), None),
            Subscribers::Many(set) => (None, Some(set.iter().copied())),
        };
        one.into_iter()
            .chain(many.into_iter().flatten())
            .map(|k| k as usize)
    }
}

/// The reactor's own copy of a channel's name when a local subscriber
/// already holds one (the key of its topic entry): every `Sub` of a
/// channel then shares one allocation instead of each keeping the one its
/// request parsed (32 B per subscriber).
pub fn shared_name(topics: &HashMap<Arc<str>, Subscribers>, name: &str) -> Option<Arc<str>> {
    topics.get_key_value(name).map(|(key, _)| key.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(s: &Subscribers) -> Vec<usize> {
        let mut v: Vec<usize> = s.iter().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn one_key_inline_then_a_set_and_back() {
        let mut s = Subscribers::new(7);
        s.insert(7);
        assert!(matches!(s, Subscribers::One(7)));
        s.insert(3);
        s.insert(9);
        assert_eq!(sorted(&s), vec![3, 7, 9]);
        assert!(!s.remove(7));
        assert!(!s.remove(3));
        assert!(matches!(s, Subscribers::One(9)));
        assert!(!s.remove(4), "another key leaves it");
        assert_eq!(sorted(&s), vec![9]);
        assert!(s.remove(9));
    }
}
