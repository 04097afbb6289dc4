//! The hub: which reactor threads have subscribers of which channel, event
//! ids, and the one place an event is encoded.
//!
//! Invariants:
//! - Ids come from one counter under the hub lock, so they increase per
//!   channel and across channels; one id is therefore a cursor for every
//!   channel of a multi-channel stream. (Redis Cluster mode: ids increase
//!   per channel only, so such a stream resumes from a position per
//!   channel, [`Resume::Each`], read from a [`cursor`].)
//! - An event is encoded once, under the lock that gives it its id, and the
//!   same `Arc<Event>` is handed to every reactor with subscribers, in id
//!   order (the handoff happens under the lock too).
//! - The hub knows reactors, not connections: a reactor registers a channel
//!   when its first local subscriber arrives and drops it with the last, so
//!   the hub's map holds only channels somebody listens to.
//!
//! No sockets and no clock here: reactors are reached through [`Outbox`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::event::Event;
use crate::mailbox::{ConnRef, Outbox};
use dedupe::Dedupe;
use history::{Delta, History, HistoryLimits};

pub mod cursor;
pub mod dedupe;
pub mod history;
pub mod ids;
mod remote;

pub use cursor::Resume;
use remote::SyncState;
pub use remote::{compact_json, NotReady, Received, RemoteEvent};

/// Channels fed by the market bridge: `trades:SYM`.
pub const MARKET_PREFIX: &str = "trades:";

/// Longest channel name.
pub const MAX_CHANNEL_LEN: usize = 128;

/// Why a channel name was refused.
pub fn check_channel(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
        return Err(format!("channel names are 1 to {MAX_CHANNEL_LEN} bytes"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || "_-.:@/".contains(c);
    match name.chars().find(|c| !ok(*c)) {
        Some(c) => Err(format!(
            "channel name has a forbidden character {c:?}; use A-Z a-z 0-9 _ - . : @ /"
        )),
        None => Ok(()),
    }
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publication {
    pub id: u64,
    /// Reactor threads the event was handed to.
    pub reactors: usize,
    /// Reactor threads whose inbox was full (the event is lost for them).
    pub dropped: usize,
    /// The publisher's id was seen within the dedupe window: nothing was
    /// published and `id` is the event the first publish produced.
    pub duplicate: bool,
}

/// What the hub keeps, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    pub history: HistoryLimits,
    /// The history of a job's channel (`job:<id>`): its whole stream, as
    /// long as the job is kept.
    pub job_history: HistoryLimits,
    /// Channels the hub tracks at most; past it, events for channels nobody
    /// subscribes to are delivered to no one and kept nowhere.
    pub max_channels: usize,
    /// Bytes of all histories together; past it the oldest events over
    /// every channel are evicted first.
    pub max_bytes: usize,
    pub dedupe_ttl_ms: u64,
    pub dedupe_max: usize,
    /// Redis mode: events arrive from the Redis bridge with stream ids, a
    /// channel's history is loaded from its stream before anyone may
    /// subscribe, and a channel lives exactly while it has local
    /// subscribers (or connections waiting for it).
    pub redis: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            history: HistoryLimits {
                max_events: 100,
                max_age_ms: 300_000,
            },
            job_history: HistoryLimits {
                max_events: 2_000,
                max_age_ms: 600_000,
            },
            max_channels: 100_000,
            max_bytes: 256 << 20,
            dedupe_ttl_ms: 300_000,
            dedupe_max: 100_000,
            redis: false,
        }
    }
}

impl HubConfig {
    /// The history bounds of `channel`.
    pub fn limits_for(&self, channel: &str) -> HistoryLimits {
        match channel.starts_with(crate::event::JOB_PREFIX) {
            true => self.job_history,
            false => self.history,
        }
    }
}

#[derive(Default)]
struct Channel {
    /// Bit per reactor thread with local subscribers.
    reactors: u64,
    history: History,
    /// Highest id this channel carried (live delivery starts after it).
    last_id: u64,
    /// Redis mode: loading from the stream, and who waits for it.
    sync: Option<Box<SyncState>>,
}

impl Channel {
    /// New subscribers may attach (always, in embedded mode).
    fn is_synced(&self) -> bool {
        self.sync.as_ref().is_none_or(|s| s.synced)
    }

    fn has_waiters(&self) -> bool {
        self.sync.as_ref().is_some_and(|s| !s.waiters.is_empty())
    }

    /// Redis mode keeps a channel only while someone local listens or waits.
    fn wanted(&self) -> bool {
        self.reactors != 0 || self.has_waiters()
    }
}

struct Inner {
    next_id: u64,
    channels: HashMap<Arc<str>, Channel>,
    /// Highest `trimmed_to` among channels the sweep removed: a cursor
    /// older than this on an unknown channel may have missed events.
    forgotten_to: u64,
    history_events: usize,
    history_bytes: usize,
    /// Channels by the id of their oldest kept event (ids grow with time),
    /// so the global byte cap evicts the oldest events first, whatever
    /// their channel.
    by_age: BTreeSet<(u64, Arc<str>)>,
    /// Market channels (`trades:SYM`) some reactor has subscribers of:
    /// what the market bridge keeps subscribed upstream.
    market: BTreeSet<Arc<str>>,
    dedupe: Dedupe,
    /// Redis mode: channels created or removed since the bridge last
    /// looked, so it can (un)subscribe them.
    changed: HashSet<Arc<str>>,
    /// Redis mode: the last sync token handed out.
    sync_tokens: u64,
}

impl Inner {
    fn account(&mut self, d: Delta) {
        self.history_events = self.history_events.saturating_add_signed(d.events);
        self.history_bytes = self.history_bytes.saturating_add_signed(d.bytes);
    }

    /// Moves `name` in the age index after its history changed; `before`
    /// is its oldest id before the change.
    fn reindex(&mut self, name: &Arc<str>, before: Option<u64>) {
        let after = self.channels.get(name).and_then(|c| c.history.oldest_id());
        if before == after {
            return;
        }
        if let Some(id) = before {
            self.by_age.remove(&(id, name.clone()));
        }
        if let Some(id) = after {
            self.by_age.insert((id, name.clone()));
        }
    }

    /// Removes a channel with everything its history held.
    fn remove_channel(&mut self, name: &str) -> Option<Channel> {
        let (name, ch) = self.channels.remove_entry(name)?;
        self.market.remove(&name);
        if let Some(id) = ch.history.oldest_id() {
            self.by_age.remove(&(id, name));
        }
        self.account(ch.history.removal());
        Some(ch)
    }

    /// Evicts the oldest events over all channels until the histories
    /// hold at most `max_bytes`; returns how many went.
    fn evict(&mut self, max_bytes: usize) -> u64 {
        let mut evicted = 0;
        while self.history_bytes > max_bytes {
            let Some((id, name)) = self.by_age.pop_first() else {
                break;
            };
            let Some(ch) = self.channels.get_mut(&name) else {
                continue;
            };
            let oldest = ch.history.oldest_id();
            let delta = match oldest == Some(id) {
                true => ch.history.evict_oldest(),
                false => Delta::default(),
            };
            evicted += u64::from(delta.events < 0);
            if let Some(next) = ch.history.oldest_id() {
                self.by_age.insert((next, name));
            }
            self.account(delta);
        }
        evicted
    }
}

/// Counters read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct HubStats {
    pub published: AtomicU64,
    pub duplicates: AtomicU64,
    pub inbox_drops: AtomicU64,
    /// Events kept out of history because the channel cap was reached.
    pub untracked: AtomicU64,
    /// Events (and batch frames) compressed for permessage-deflate
    /// subscribers: once each per compressor window in use.
    pub ws_compressions: AtomicU64,
    /// Events compressed for gzip SSE subscribers (once each).
    pub sse_gzip_compressions: AtomicU64,
    /// Events replayed to resuming subscribers.
    pub replayed: AtomicU64,
    /// Resumes from a point older than the history.
    pub resets: AtomicU64,
    /// Redis mode: events from the pub/sub link this node already had.
    pub remote_repeats: AtomicU64,
    /// Redis mode: live events dropped because a loading channel held
    /// too many back.
    pub held_dropped: AtomicU64,
    /// Events evicted from history because all histories together reached
    /// `history.max_bytes`.
    pub evicted: AtomicU64,
    /// Redis mode: channel histories loaded from Redis streams.
    pub syncs: AtomicU64,
}

/// Sizes the metrics endpoint reports.
#[derive(Debug, Default, Clone, Copy)]
pub struct HubFigures {
    pub channels: usize,
    pub history_events: usize,
    pub history_bytes: usize,
    pub dedupe_keys: usize,
}

/// A subscription's starting point.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Per channel (in the order subscribed): events with ids up to this
    /// one are in `replay` or not for this subscriber; live delivery
    /// starts after it.
    pub live_from: Vec<u64>,
    /// Events after the cursor, oldest first, over all channels.
    pub replay: Vec<Arc<Event>>,
    /// Channels whose history no longer reaches back to the cursor.
    pub resets: Vec<Arc<str>>,
}

pub struct Hub {
    inner: Mutex<Inner>,
    outboxes: Vec<Arc<dyn Outbox>>,
    config: HubConfig,
    pub stats: HubStats,
    /// Redis mode: the pub/sub link works, so waiting for a channel to
    /// load makes sense.
    link_up: AtomicBool,
}

/// Most reactor threads a hub serves (one bit each in a channel's mask).
pub const MAX_REACTORS: usize = 64;

impl Hub {
    /// `first_id` seeds the id counter; pass something that grows across
    /// restarts (the caller uses the wall clock in microseconds) so a client
    /// resuming after a restart never holds an id from the future.
    pub fn new(outboxes: Vec<Arc<dyn Outbox>>, first_id: u64, config: HubConfig) -> Hub {
        assert!(
            outboxes.len() <= MAX_REACTORS,
            "at most {MAX_REACTORS} reactors"
        );
        Hub {
            inner: Mutex::new(Inner {
                next_id: first_id.max(1),
                channels: HashMap::new(),
                forgotten_to: 0,
                history_events: 0,
                history_bytes: 0,
                by_age: BTreeSet::new(),
                market: BTreeSet::new(),
                dedupe: Dedupe::new(config.dedupe_ttl_ms, config.dedupe_max),
                changed: HashSet::new(),
                sync_tokens: 0,
            }),
            outboxes,
            config,
            stats: HubStats::default(),
            link_up: AtomicBool::new(false),
        }
    }

    /// The history bounds of `channel` (a job's channel keeps more).
    pub fn limits_for(&self, channel: &str) -> HistoryLimits {
        self.config.limits_for(channel)
    }

    /// How clients see an id: a number, or a Redis stream id.
    pub fn show_id(&self, id: u64) -> String {
        match self.config.redis {
            true => ids::stream_id(id),
            false => id.to_string(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves counters, masks and queues
        // that are each consistent: keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reactor of `conn` has (more) local subscribers of `channels`:
    /// from now on it gets their events. With a cursor, the snapshot holds what
    /// came after it. Attaching and reading history happen under one lock,
    /// so between replay and live delivery nothing is lost or doubled.
    ///
    /// In Redis mode a channel first loads its history from Redis: until
    /// then nothing attaches, `conn` is told through its reactor's
    /// [`Outbox::retry`] when to try again, and the answer is
    /// [`NotReady::Loading`].
    pub fn subscribe(
        &self,
        conn: ConnRef,
        channels: &[Arc<str>],
        cursor: Option<u64>,
    ) -> Result<Snapshot, NotReady> {
        let resume = match cursor {
            Some(id) => Resume::At(id),
            None => Resume::Fresh,
        };
        self.subscribe_from(conn, channels, &resume)
    }

    /// [`Hub::subscribe`] with a resume point per channel (a composite
    /// cursor of Redis Cluster mode, in the order of `channels`).
    pub fn subscribe_from(
        &self,
        conn: ConnRef,
        channels: &[Arc<str>],
        resume: &Resume,
    ) -> Result<Snapshot, NotReady> {
        let mut inner = self.lock();
        if self.config.redis {
            self.wait_for_sync(&mut inner, channels, conn)?;
        }
        let reactor = conn.reactor;
        let mut snap = Snapshot::default();
        let (forgotten_to, last_id) = (inner.forgotten_to, inner.next_id.saturating_sub(1));
        for (i, name) in channels.iter().enumerate() {
            let cursor = resume.of(i);
            let known = inner.channels.contains_key(name);
            let market = name.starts_with(MARKET_PREFIX);
            if market {
                inner.market.insert(name.clone());
            }
            let ch = inner.channels.entry(name.clone()).or_default();
            ch.reactors |= 1 << reactor;
            // The client has everything up to its cursor. In Redis mode it
            // may come from a node that is ahead of this one: what this
            // node has not received yet up to the cursor must not reach
            // it again when it arrives.
            snap.live_from.push(ch.last_id.max(cursor.unwrap_or(0)));
            let Some(cursor) = cursor else {
                // A new subscriber of a symbol gets its latest trade at once.
                if let Some(latest) = ch.history.latest().filter(|_| market) {
                    snap.replay.push(latest);
                }
                continue;
            };
            let complete = match known {
                true => ch.history.since(cursor, &mut snap.replay),
                false => cursor >= forgotten_to,
            };
            if !complete && cursor < last_id.max(ch.last_id) {
                snap.resets.push(name.clone());
            }
        }
        drop(inner);
        if channels.len() > 1 {
            snap.replay.sort_unstable_by_key(|ev| ev.id);
        }
        self.stats
            .replayed
            .fetch_add(snap.replay.len() as u64, Ordering::Relaxed);
        self.stats
            .resets
            .fetch_add(snap.resets.len() as u64, Ordering::Relaxed);
        Ok(snap)
    }

    /// Reactor `reactor` has no local subscribers of `channel` any more.
    /// The channel stays while it has history; the sweep removes it later.
    pub fn detach(&self, reactor: usize, channel: &str) {
        let mut inner = self.lock();
        let Inner {
            channels, market, ..
        } = &mut *inner;
        let Some(ch) = channels.get_mut(channel) else {
            return;
        };
        ch.reactors &= !(1 << reactor);
        if ch.reactors == 0 {
            market.remove(channel);
        }
        if self.config.redis {
            // Nobody here listens: the channel stops being kept in sync.
            if !ch.wanted() {
                inner.remove_channel(channel);
                inner.changed.insert(Arc::from(channel));
            }
            return;
        }
        if ch.reactors == 0 && ch.history.is_empty() {
            let trimmed = ch.history.trimmed_to();
            inner.channels.remove(channel);
            inner.forgotten_to = inner.forgotten_to.max(trimmed);
        }
    }

    /// Applies the global byte cap after histories grew.
    fn enforce_max_bytes(&self, inner: &mut Inner) {
        let evicted = inner.evict(self.config.max_bytes);
        if evicted > 0 {
            self.stats.evicted.fetch_add(evicted, Ordering::Relaxed);
        }
    }

    /// The market channels somebody here subscribes to.
    pub fn market_interest(&self) -> Vec<Arc<str>> {
        self.lock().market.iter().cloned().collect()
    }

    /// Tells the subscribers of `channel` something went wrong upstream
    /// (WebSocket `{"type":"error"}`, SSE `event: error`).
    pub fn channel_error(&self, channel: &Arc<str>, code: &'static str, message: &str) {
        let mask = match self.lock().channels.get(channel) {
            Some(ch) => ch.reactors,
            None => return,
        };
        let message: Arc<str> = Arc::from(message);
        for (i, outbox) in self.outboxes.iter().enumerate() {
            if mask & (1 << i) != 0 && !outbox.error(channel.clone(), code, message.clone()) {
                self.stats.inbox_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// How many of `channels` the hub does not track yet (subscribing to
    /// them would create them).
    pub fn unknown(&self, channels: &[Arc<str>]) -> usize {
        let inner = self.lock();
        channels
            .iter()
            .filter(|c| !inner.channels.contains_key(*c))
            .count()
    }

    pub fn figures(&self) -> HubFigures {
        let inner = self.lock();
        HubFigures {
            channels: inner.channels.len(),
            history_events: inner.history_events,
            history_bytes: inner.history_bytes,
            dedupe_keys: inner.dedupe.len(),
        }
    }

    /// Gives the event an id, encodes it once, keeps it in the channel's
    /// history and hands it to every reactor with subscribers. `data_json`
    /// must be compact JSON; `publish_id` makes the publish idempotent.
    pub fn publish(
        &self,
        channel: &str,
        data_json: &str,
        publish_id: Option<&str>,
        now_ms: u64,
    ) -> Publication {
        let mut inner = self.lock();
        if let Some(key) = publish_id {
            if let Some(id) = inner.dedupe.get(key, now_ms) {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return Publication {
                    id,
                    reactors: 0,
                    dropped: 0,
                    duplicate: true,
                };
            }
        }
        let id = inner.next_id;
        inner.next_id = id.saturating_add(1);
        if let Some(key) = publish_id {
            inner.dedupe.insert(key, id, now_ms);
        }
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        let mut done = Publication {
            id,
            reactors: 0,
            dropped: 0,
            duplicate: false,
        };
        let limits = self.config.limits_for(channel);
        if !inner.channels.contains_key(channel) {
            if limits.max_events == 0 || inner.channels.len() >= self.config.max_channels {
                if limits.max_events > 0 {
                    self.stats.untracked.fetch_add(1, Ordering::Relaxed);
                }
                return done;
            }
            inner
                .channels
                .insert(Arc::from(channel), Channel::default());
        }
        let Some((name, ch)) = inner.channels.get_key_value(channel) else {
            return done;
        };
        let (name, mask) = (name.clone(), ch.reactors);
        let event = Arc::new(Event::new(id, name.clone(), data_json));
        (done.reactors, done.dropped) = self.fan_out(&event, mask);
        let (delta, before) = match inner.channels.get_mut(&name) {
            Some(ch) => {
                ch.last_id = id;
                let before = ch.history.oldest_id();
                (ch.history.push(event, now_ms, limits), before)
            }
            None => (Delta::default(), None),
        };
        inner.reindex(&name, before);
        inner.account(delta);
        self.enforce_max_bytes(&mut inner);
        done
    }

    /// Hands the event to every reactor in `mask`; returns (handed,
    /// dropped because the inbox was full). Called under the hub lock, so
    /// every reactor sees a channel's events in id order.
    fn fan_out(&self, event: &Arc<Event>, mask: u64) -> (usize, usize) {
        let (mut handed, mut dropped) = (0, 0);
        for (i, outbox) in self.outboxes.iter().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            match outbox.deliver(event.clone()) {
                true => handed += 1,
                false => dropped += 1,
            }
        }
        if dropped > 0 {
            let before = self
                .stats
                .inbox_drops
                .fetch_add(dropped as u64, Ordering::Relaxed);
            // Logged at the 1st, 2nd, 4th, 8th… drop: visible, never a flood.
            let after = before + dropped as u64;
            if (before + 1..=after).any(u64::is_power_of_two) {
                log::warn!(
                    "a reactor inbox is full: event {} of {} lost for {dropped} reactor(s); {after} lost so far (redix_inbox_dropped_total)",
                    event.id,
                    event.channel
                );
            }
        }
        (handed, dropped)
    }

    /// Removes expired history and the channels left with neither history
    /// nor subscribers, and forgets expired publish ids. Returns the number
    /// of channels removed.
    pub fn sweep(&self, now_ms: u64) -> usize {
        let mut inner = self.lock();
        let config = self.config;
        let mut delta = Delta::default();
        let mut forgotten = inner.forgotten_to;
        let before = inner.channels.len();
        let redis = self.config.redis;
        let Inner {
            channels, by_age, ..
        } = &mut *inner;
        channels.retain(|name, ch| {
            let before = ch.history.oldest_id();
            delta.add(ch.history.expire(now_ms, config.limits_for(name)));
            let keep = ch.wanted() || !redis && !ch.history.is_empty();
            let after = ch.history.oldest_id().filter(|_| keep);
            if before != after {
                before.map(|id| by_age.remove(&(id, name.clone())));
                after.map(|id| by_age.insert((id, name.clone())));
            }
            if !keep {
                forgotten = forgotten.max(ch.history.trimmed_to());
                delta.add(ch.history.removal());
            }
            keep
        });
        let removed = before - inner.channels.len();
        if inner.channels.capacity() > 4 * inner.channels.len().max(1024) {
            inner.channels.shrink_to_fit();
        }
        inner.forgotten_to = forgotten;
        inner.account(delta);
        inner.dedupe.expire(now_ms);
        removed
    }
}

#[cfg(test)]
mod tests;
