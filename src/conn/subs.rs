//! The channels a subscriber connection listens to.
//!
//! Most streams hold one channel: it is kept inline (24 B, the size of
//! the pointer and length of a boxed slice plus its tag, which rides in
//! the channel name's non-null pointer), so an idle single-channel
//! subscriber allocates nothing for its list. More channels live in a
//! boxed slice of exactly their number (a subscribe or unsubscribe on a
//! WebSocket reallocates it; both are rate-limited commands, never on the
//! delivery path).

use std::ops::Deref;
use std::sync::Arc;

/// One channel a connection listens to, and where its live delivery
/// starts (events up to `live_from` came by replay, or not at all).
#[derive(Debug, Clone)]
pub struct Sub {
    pub channel: Arc<str>,
    pub live_from: u64,
}

/// A connection's channels, in the order they were added (a removal
/// moves the last one into the gap).
#[derive(Debug)]
pub struct Subs(Repr);

#[derive(Debug)]
enum Repr {
    One(Sub),
    /// None (an empty slice does not allocate), or two and more.
    Many(Box<[Sub]>),
}

impl Default for Subs {
    fn default() -> Subs {
        Subs(Repr::Many(Box::default()))
    }
}

impl Deref for Subs {
    type Target = [Sub];

    fn deref(&self) -> &[Sub] {
        match &self.0 {
            Repr::One(sub) => std::slice::from_ref(sub),
            Repr::Many(subs) => subs,
        }
    }
}

impl FromIterator<Sub> for Subs {
    fn from_iter<I: IntoIterator<Item = Sub>>(iter: I) -> Subs {
        Subs::from_vec(iter.into_iter().collect())
    }
}

impl Subs {
    fn from_vec(mut subs: Vec<Sub>) -> Subs {
        match (subs.len(), subs.pop()) {
            (1, Some(one)) => Subs(Repr::One(one)),
            (_, last) => {
                subs.extend(last);
                Subs(Repr::Many(subs.into_boxed_slice()))
            }
        }
    }

    fn take(&mut self) -> Vec<Sub> {
        match std::mem::take(self).0 {
            Repr::One(sub) => vec![sub],
            Repr::Many(subs) => subs.into_vec(),
        }
    }

    /// Adds a channel (the caller checked it is not there yet).
    pub fn push(&mut self, sub: Sub) {
        let mut subs = self.take();
        subs.reserve_exact(1);
        subs.push(sub);
        *self = Subs::from_vec(subs);
    }

    /// Takes out the channel at `index`; the last one takes its place.
    pub fn swap_remove(&mut self, index: usize) -> Sub {
        let mut subs = self.take();
        let sub = subs.swap_remove(index);
        *self = Subs::from_vec(subs);
        sub
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(name: &str) -> Sub {
        Sub {
            channel: Arc::from(name),
            live_from: 0,
        }
    }

    fn names(subs: &Subs) -> Vec<&str> {
        subs.iter().map(|s| &*s.channel).collect()
    }

    #[test]
    fn one_inline_more_in_a_slice_and_back() {
        let mut subs = Subs::default();
        assert!(subs.is_empty());
        subs.push(sub("a"));
        assert!(matches!(subs.0, Repr::One(_)));
        subs.push(sub("b"));
        subs.push(sub("c"));
        assert_eq!(names(&subs), ["a", "b", "c"]);
        assert_eq!(&*subs.swap_remove(0).channel, "a");
        assert_eq!(names(&subs), ["c", "b"]);
        subs.swap_remove(1);
        assert!(matches!(subs.0, Repr::One(_)));
        assert_eq!(names(&subs), ["c"]);
        subs.swap_remove(0);
        assert!(subs.is_empty());
        let from: Subs = [sub("x"), sub("y")].into_iter().collect();
        assert_eq!(names(&from), ["x", "y"]);
        let one: Subs = [sub("x")].into_iter().collect();
        assert!(matches!(one.0, Repr::One(_)));
    }

    #[test]
    fn the_list_is_as_large_as_one_sub() {
        assert_eq!(std::mem::size_of::<Subs>(), std::mem::size_of::<Sub>());
    }
}
