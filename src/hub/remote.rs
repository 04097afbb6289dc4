//! Redis mode in the hub: events arrive with stream ids from the Redis
//! bridge, a channel loads its history from its stream before anyone may
//! attach, and the bridge learns which channels to (un)subscribe.
//!
//! A channel's life in Redis mode:
//! 1. A subscribe finds it missing: it is created unsynced, the connection
//!    is recorded as a waiter, and the channel is marked changed.
//! 2. The bridge SUBSCRIBEs it; once Redis confirms, [`Hub::begin_sync`]
//!    hands out a token, and from then on live events are held back.
//! 3. The bridge reads the stream; [`Hub::finish_sync`] merges it with
//!    what was held back, in id order, marks the channel synced and tells
//!    the waiters to try again.
//! 4. When the link was lost, steps 2 and 3 run again for every channel:
//!    it keeps serving its subscribers meanwhile, and the merge delivers
//!    what was published while the link was down.
//! 5. When its last local subscriber leaves, the channel is removed and
//!    the bridge UNSUBSCRIBEs it.
//!
//! Events of one channel reach the hub in id order (Redis publishes in
//! script order), so anything at or below a channel's last id is a repeat.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::history::Delta;
use super::{Channel, Event, Hub, Inner};
use crate::mailbox::ConnRef;

/// Connections waiting for one channel to load, at most.
const MAX_WAITERS: usize = 65_536;
/// Live events held back while one channel loads, at most; more are
/// dropped (and counted).
const MAX_HELD: usize = 100_000;

/// Why a subscribe cannot attach now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// A channel is loading from Redis; the waiter will be told to retry.
    Loading,
    /// A channel is not loaded and the Redis link is down.
    Unavailable,
    /// The channel cap, or the waiters of a channel, are at their limit.
    Full,
}

/// One event read from Redis (pub/sub or stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEvent {
    /// The packed stream id (see [`super::ids`]).
    pub id: u64,
    /// The stream id as Redis wrote it.
    pub id_text: String,
    pub data: String,
}

/// What the hub did with an event from the pub/sub link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Kept and handed to the reactors with subscribers.
    Delivered,
    /// The channel is loading: held back for the merge.
    Held,
    /// At or below the channel's last id: already here.
    Repeat,
    /// Nobody here listens to the channel (any more).
    NotHere,
}

/// Redis-mode state of one channel.
#[derive(Debug, Default)]
pub(super) struct SyncState {
    /// The history was loaded once: subscribers may attach.
    pub synced: bool,
    /// Token of the load in progress; 0 when none runs.
    pub token: u64,
    /// The stream had dropped ids up to this at the last load.
    pub floor: u64,
    /// Live events that arrived while loading.
    pub held: Vec<Arc<Event>>,
    pub waiters: Vec<ConnRef>,
}

/// Event data from Redis as one line of JSON. Publishers other than redix
/// may send anything: JSON spread over lines is compacted, and data that
/// is not JSON at all is delivered as a JSON string.
pub fn compact_json(data: &str) -> Cow<'_, str> {
    let one_line = !data.contains(['\n', '\r']);
    if one_line && serde_json::from_str::<serde::de::IgnoredAny>(data).is_ok() {
        return Cow::Borrowed(data);
    }
    match serde_json::from_str::<serde_json::Value>(data) {
        Ok(v) => Cow::Owned(v.to_string()),
        Err(_) => Cow::Owned(serde_json::Value::String(data.to_owned()).to_string()),
    }
}

impl Hub {
    /// Redis mode, under the lock: Ok when every channel is loaded; else
    /// registers `waiter` on the ones that are not.
    pub(super) fn wait_for_sync(
        &self,
        inner: &mut Inner,
        channels: &[Arc<str>],
        waiter: ConnRef,
    ) -> Result<(), NotReady> {
        let loaded =
            |inner: &Inner, c: &Arc<str>| inner.channels.get(c).is_some_and(Channel::is_synced);
        if channels.iter().all(|c| loaded(inner, c)) {
            return Ok(());
        }
        if !self.link_up.load(Ordering::Acquire) {
            return Err(NotReady::Unavailable);
        }
        let new = channels
            .iter()
            .filter(|c| !inner.channels.contains_key(*c))
            .count();
        if inner.channels.len() + new > self.config.max_channels {
            return Err(NotReady::Full);
        }
        for name in channels {
            if loaded(inner, name) {
                continue;
            }
            let ch = inner.channels.entry(name.clone()).or_default();
            let fresh = !ch.wanted();
            let sync = ch.sync.get_or_insert_with(Box::default);
            if sync.waiters.len() >= MAX_WAITERS {
                return Err(NotReady::Full);
            }
            sync.waiters.push(waiter);
            if fresh {
                inner.changed.insert(name.clone());
            }
        }
        Err(NotReady::Loading)
    }

    /// A connection that waited for `channels` is gone or gave up.
    pub fn cancel_wait(&self, channels: &[Arc<str>], waiter: ConnRef) {
        let mut inner = self.lock();
        for name in channels {
            let Some(ch) = inner.channels.get_mut(name) else {
                continue;
            };
            if let Some(sync) = ch.sync.as_mut() {
                sync.waiters.retain(|w| *w != waiter);
            }
            if !ch.wanted() {
                inner.remove_channel(name);
                inner.changed.insert(name.clone());
            }
        }
    }

    /// An event from the pub/sub link.
    pub fn receive(&self, channel: &str, ev: RemoteEvent, now_ms: u64) -> Received {
        let mut inner = self.lock();
        let Some((name, ch)) = inner.channels.get_key_value(channel) else {
            return Received::NotHere;
        };
        if ev.id <= ch.last_id {
            self.stats.remote_repeats.fetch_add(1, Ordering::Relaxed);
            return Received::Repeat;
        }
        let name = name.clone();
        let data = compact_json(&ev.data);
        let event = Arc::new(Event::with_id_text(ev.id, &ev.id_text, name.clone(), &data));
        let Some(ch) = inner.channels.get_mut(&name) else {
            return Received::NotHere;
        };
        match ch.sync.as_mut() {
            Some(sync) if sync.token != 0 => {
                if sync.held.len() < MAX_HELD {
                    sync.held.push(event);
                } else {
                    self.stats.held_dropped.fetch_add(1, Ordering::Relaxed);
                }
                return Received::Held;
            }
            // Not loaded and no load running: the load will read it.
            Some(sync) if !sync.synced => return Received::NotHere,
            _ => {}
        }
        self.append(&mut inner, &name, &[event], now_ms);
        Received::Delivered
    }

    /// Appends events (in id order, repeats skipped) to a channel's history
    /// and hands them to its reactors.
    /// Appends events to a channel's history (accounted, under the byte
    /// cap) and fans them out.
    fn append(&self, inner: &mut Inner, name: &Arc<str>, events: &[Arc<Event>], now_ms: u64) {
        let delta = self.push_events(inner, name, events, now_ms);
        inner.account(delta);
        self.enforce_max_bytes(inner);
    }

    fn push_events(
        &self,
        inner: &mut Inner,
        name: &Arc<str>,
        events: &[Arc<Event>],
        now_ms: u64,
    ) -> Delta {
        let mut delta = Delta::default();
        // A job's channel keeps its whole stream (`jobs.*`), not a
        // channel's recent history.
        let limits = self.config.limits_for(name);
        let Some(ch) = inner.channels.get_mut(name) else {
            return delta;
        };
        let before = ch.history.oldest_id();
        let mut last = 0;
        for ev in events {
            if ev.id <= ch.last_id {
                continue;
            }
            ch.last_id = ev.id;
            last = ev.id;
            delta.add(ch.history.push(ev.clone(), now_ms, limits));
            self.fan_out(ev, ch.reactors);
            self.stats.published.fetch_add(1, Ordering::Relaxed);
        }
        // Ids from Redis stay far below the top (see `ids`); saturating
        // all the same, as nothing here may overflow on what a peer sent.
        inner.next_id = inner.next_id.max(last.saturating_add(1));
        inner.reindex(name, before);
        delta
    }

    /// Redis confirmed the subscription of `channel`: a load may start.
    /// Returns its token and, for a channel that was loaded before, the
    /// last id it has (the reload wants what came after); None when nobody
    /// here wants the channel.
    pub fn begin_sync(&self, channel: &str) -> Option<(u64, Option<u64>)> {
        let mut inner = self.lock();
        inner.sync_tokens += 1;
        let token = inner.sync_tokens;
        let ch = inner.channels.get_mut(channel)?;
        let last_id = ch.last_id;
        let sync = ch.sync.get_or_insert_with(Box::default);
        sync.token = token;
        sync.held = Vec::new();
        let after = sync.synced.then_some(last_id);
        Some((token, after))
    }

    /// The load with `token` read `events` (oldest first) from the stream
    /// of `channel`, and the stream had already dropped ids up to
    /// `trimmed_to`. Merges them with what arrived meanwhile, delivers what
    /// is new and lets the waiters attach. False when the load is stale.
    pub fn finish_sync(
        &self,
        channel: &str,
        token: u64,
        events: Vec<RemoteEvent>,
        trimmed_to: u64,
        now_ms: u64,
    ) -> bool {
        let mut inner = self.lock();
        let Some((name, ch)) = inner.channels.get_key_value(channel) else {
            return false;
        };
        let name = name.clone();
        if ch.sync.as_ref().is_none_or(|s| s.token != token) {
            return false;
        }
        let mut all: Vec<Arc<Event>> = events
            .into_iter()
            .map(|ev| {
                let data = compact_json(&ev.data);
                Arc::new(Event::with_id_text(ev.id, &ev.id_text, name.clone(), &data))
            })
            .collect();
        let Some(ch) = inner.channels.get_mut(&name) else {
            return false;
        };
        ch.history.raise_floor(trimmed_to);
        let Some(sync) = ch.sync.as_mut() else {
            return false;
        };
        if sync.synced && trimmed_to > ch.last_id.max(sync.floor) {
            // The stream dropped events this node never delivered: tell
            // the subscribers instead of leaving a silent gap.
            self.stats.resets.fetch_add(1, Ordering::Relaxed);
            for (i, outbox) in self.outboxes.iter().enumerate() {
                if ch.reactors & (1 << i) != 0 {
                    outbox.reset(name.clone());
                }
            }
        }
        all.append(&mut sync.held);
        all.sort_by_key(|ev| ev.id);
        all.dedup_by_key(|ev| ev.id);
        sync.token = 0;
        sync.synced = true;
        sync.floor = sync.floor.max(trimmed_to);
        let waiters = std::mem::take(&mut sync.waiters);
        self.append(&mut inner, &name, &all, now_ms);
        drop(inner);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        for w in waiters {
            if let Some(outbox) = self.outboxes.get(w.reactor) {
                outbox.retry(w, name.clone());
            }
        }
        true
    }

    /// The Redis bridge's pub/sub link came up or went down. Down: loads
    /// in progress are abandoned (they restart after the reconnect), and
    /// connections waiting for a channel that never loaded are told to
    /// retry, which they answer with 503.
    pub fn set_link(&self, up: bool) {
        self.link_up.store(up, Ordering::Release);
        if up {
            return;
        }
        let mut inner = self.lock();
        let mut woken = Vec::new();
        let mut gone = Vec::new();
        for (name, ch) in inner.channels.iter_mut() {
            if let Some(sync) = ch.sync.as_mut() {
                sync.token = 0;
                sync.held = Vec::new();
                woken.extend(sync.waiters.drain(..).map(|w| (w, name.clone())));
            }
            if !ch.wanted() {
                gone.push(name.clone());
            }
        }
        for name in gone {
            inner.remove_channel(&name);
            inner.changed.insert(name);
        }
        drop(inner);
        for (w, name) in woken {
            if let Some(outbox) = self.outboxes.get(w.reactor) {
                outbox.retry(w, name);
            }
        }
    }

    /// The newest id this hub has seen (0: none).
    pub fn last_id(&self) -> u64 {
        self.lock().next_id.saturating_sub(1)
    }

    pub fn link_is_up(&self) -> bool {
        self.link_up.load(Ordering::Acquire)
    }

    /// Channels created or removed since the last call, each with whether
    /// it is wanted now.
    pub fn take_changes(&self) -> Vec<(Arc<str>, bool)> {
        let mut inner = self.lock();
        let changed = std::mem::take(&mut inner.changed);
        changed
            .into_iter()
            .map(|name| {
                let wanted = inner.channels.contains_key(&name);
                (name, wanted)
            })
            .collect()
    }

    /// Every channel wanted now (to resubscribe after a reconnect).
    pub fn wanted_channels(&self) -> Vec<Arc<str>> {
        self.lock().channels.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{chans, config, Recorder};
    use super::super::HubConfig;
    use super::*;
    use crate::mailbox::Outbox;

    fn redis_hub(n: usize) -> (Hub, Vec<Arc<Recorder>>) {
        let recs: Vec<Arc<Recorder>> = (0..n).map(|_| Arc::new(Recorder::default())).collect();
        let outs = recs.iter().map(|r| r.clone() as Arc<dyn Outbox>).collect();
        let cfg = HubConfig {
            redis: true,
            ..config(10)
        };
        let hub = Hub::new(outs, 1, cfg);
        hub.set_link(true);
        (hub, recs)
    }

    fn ev(id: u64) -> RemoteEvent {
        RemoteEvent {
            id,
            id_text: super::super::ids::stream_id(id),
            data: format!("{id}"),
        }
    }

    const W: ConnRef = ConnRef {
        reactor: 0,
        key: 7,
        gen: 1,
    };

    #[test]
    fn a_channel_loads_before_anyone_attaches_and_merges_what_came_meanwhile() {
        let (hub, recs) = redis_hub(1);
        let c = chans(&["c"]);
        assert_eq!(hub.subscribe(W, &c, None).err(), Some(NotReady::Loading));
        assert_eq!(hub.take_changes(), vec![(c[0].clone(), true)]);
        let (token, _) = hub.begin_sync("c").unwrap();
        // Live events while loading are held, not delivered.
        assert_eq!(hub.receive("c", ev(12), 0), Received::Held);
        assert!(hub.finish_sync("c", token, vec![ev(10), ev(11), ev(12)], 5, 0));
        assert_eq!(*recs[0].retried.lock().unwrap(), vec![(7, 1)]);
        let snap = hub.subscribe(W, &c, Some(10)).unwrap();
        assert_eq!(
            snap.replay.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![11, 12]
        );
        assert_eq!(snap.live_from, vec![12]);
        assert!(snap.resets.is_empty());
        let snap = hub.subscribe(W, &c, Some(4)).unwrap();
        assert_eq!(snap.resets, c, "the stream had dropped ids up to 5");
        assert_eq!(hub.receive("c", ev(12), 0), Received::Repeat);
        assert_eq!(hub.receive("c", ev(13), 0), Received::Delivered);
        assert_eq!(*recs[0].got.lock().unwrap(), vec![13]);
    }

    #[test]
    fn a_reload_after_a_lost_link_delivers_the_gap_in_order() {
        let (hub, recs) = redis_hub(1);
        let c = chans(&["c"]);
        let _ = hub.subscribe(W, &c, None);
        let (t, after) = hub.begin_sync("c").unwrap();
        assert_eq!(after, None, "a first load");
        hub.finish_sync("c", t, vec![ev(1)], 0, 0);
        hub.subscribe(W, &c, None).unwrap();
        hub.set_link(false);
        // Still serving: a new subscriber attaches to the loaded channel.
        assert!(hub.subscribe(W, &c, None).is_ok());
        assert_eq!(
            hub.subscribe(W, &chans(&["new"]), None).err(),
            Some(NotReady::Unavailable)
        );
        hub.set_link(true);
        let (t, after) = hub.begin_sync("c").unwrap();
        assert_eq!(after, Some(1), "a reload reads after the last id");
        assert_eq!(hub.receive("c", ev(5), 0), Received::Held);
        assert!(!hub.finish_sync("c", t - 1, vec![], 0, 0), "stale token");
        assert!(hub.finish_sync("c", t, vec![ev(2), ev(3)], 0, 0));
        assert_eq!(*recs[0].got.lock().unwrap(), vec![2, 3, 5]);
        assert!(recs[0].resets.lock().unwrap().is_empty());
        // A reload that finds events gone from the stream says so first.
        let (t, _) = hub.begin_sync("c").unwrap();
        assert!(hub.finish_sync("c", t, vec![ev(9)], 8, 0));
        assert_eq!(*recs[0].resets.lock().unwrap(), vec!["c".to_string()]);
        assert_eq!(recs[0].got.lock().unwrap().last(), Some(&9));
    }

    #[test]
    fn the_last_subscriber_leaving_removes_the_channel() {
        let (hub, _) = redis_hub(1);
        let c = chans(&["c"]);
        let _ = hub.subscribe(W, &c, None);
        hub.take_changes();
        hub.cancel_wait(&c, W);
        assert_eq!(hub.take_changes(), vec![(c[0].clone(), false)]);
        assert_eq!(hub.receive("c", ev(3), 0), Received::NotHere);
        let _ = hub.subscribe(W, &c, None);
        let (t, _) = hub.begin_sync("c").unwrap();
        hub.finish_sync("c", t, vec![], 0, 0);
        hub.subscribe(W, &c, None).unwrap();
        hub.take_changes();
        hub.detach(0, "c");
        assert_eq!(hub.take_changes(), vec![(c[0].clone(), false)]);
        assert_eq!(hub.figures().channels, 0);
    }

    #[test]
    fn the_largest_id_does_not_overflow_the_count() {
        let (hub, _) = redis_hub(1);
        let c = chans(&["c"]);
        let _ = hub.subscribe(W, &c, None);
        let (t, _) = hub.begin_sync("c").unwrap();
        assert!(hub.finish_sync("c", t, vec![ev(u64::MAX)], 0, 0));
        assert_eq!(hub.receive("c", ev(u64::MAX), 0), Received::Repeat);
        assert!(hub.last_id() >= u64::MAX - 1);
    }

    #[test]
    fn data_from_other_publishers_becomes_one_line_of_json() {
        assert_eq!(compact_json(r#"{"a":1}"#), r#"{"a":1}"#);
        assert_eq!(compact_json("{\n \"a\": 1\n}"), r#"{"a":1}"#);
        assert_eq!(compact_json("hello\nworld"), r#""hello\nworld""#);
        assert_eq!(compact_json(""), r#""""#);
    }
}
