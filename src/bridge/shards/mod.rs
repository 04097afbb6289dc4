//! Redis Cluster's receiving side: sharded pub/sub, one subscriber
//! connection per master ([`link::ShardLink`]), each channel `SSUBSCRIBE`d
//! on the master that owns its slot. Publishes announce with `SPUBLISH`
//! (`scripts/publish.lua`), so a channel's events come from one master, in
//! the order its script ran, and only over that shard's link.
//!
//! The thread keeps the slot map ([`slots`]) and, for every wanted channel,
//! its home: the master it is subscribed on (or will be once that link is
//! up), or none while no master is known. Invariants:
//! - a channel is SSUBSCRIBEd on its home's link only; it leaves the old
//!   link (`SUNSUBSCRIBE`) before it joins a new one;
//! - every confirmed SSUBSCRIBE starts the channel's load, which after the
//!   first one reads the stream from the last id delivered here
//!   ([`Hub::begin_sync`]): whatever the link missed while the channel was
//!   moving, or its link was down, comes from the stream, in order, once.
//!
//! What moves a channel:
//! - `MOVED`/`ASK` answering its SSUBSCRIBE: it goes to the named master
//!   (if we know it) or waits for a fresh slot map;
//! - a `sunsubscribe` Redis pushes (its slot migrated away): it waits for a
//!   fresh slot map, then joins the new owner and reloads;
//! - a lost link: the map is read again (a replica may have been
//!   promoted), links to masters no longer in it close, links to new ones
//!   open, and every channel they carry is subscribed and reloaded.
//!
//! The map is also read every [`REFRESH_EVERY`], so the links converge on
//! the cluster's masters whatever was missed.
//!
//! The readiness canary is a classic PUBLISH, which the cluster bus takes
//! to every node: each link subscribes it, so each link proves itself.
//! The pub/sub side is up (`/readyz`) while every master of the map has a
//! link whose canary returns in time.

mod link;
pub mod slots;
pub mod stats;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select};

use super::loads::Unsent;
use super::pubsub::{receive, Chunk, MAX_BACKLOG, READ_TIMEOUT};
use super::{Backoff, Endpoint, Quiet};
use crate::clock::Clock;
use crate::health::Beat;
use crate::hub::Hub;
use crate::link::Redis;
use link::{Heard, ShardLink};
use slots::{Addr, SlotMap};

/// The slot map is read again at most this often when something asks.
const MIN_REFRESH: Duration = Duration::from_millis(100);
/// …and at least this often, so the links converge on the cluster's
/// masters even when no link noticed a change (say, a master that came
/// back as a replica before the node saw its failover).
const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// The sharded pub/sub thread's inputs.
pub struct ShardedPubSub {
    pub redis: Arc<Redis>,
    pub hub: Arc<Hub>,
    pub clock: Clock,
    pub beat: Beat,
}

/// One master and its link (none while it is down).
struct Shard {
    link: Option<ShardLink>,
    backoff: Backoff,
    quiet: Quiet,
    reconnect_at: Instant,
}

struct Thread<'a> {
    redis: &'a Redis,
    hub: &'a Hub,
    clock: Clock,
    /// Stamped each turn, and before each connection attempt (each may
    /// take `redis.timeout_ms`).
    beat: &'a Beat,
    /// Credentials for every node (the first seed's).
    template: Endpoint,
    map: SlotMap,
    shards: BTreeMap<Addr, Shard>,
    /// Every wanted channel and its master (none: no master known yet).
    home: HashMap<Arc<str>, Option<Addr>>,
    refresh_at: Option<Instant>,
    refreshed_at: Instant,
    refresh_backoff: Backoff,
    /// Loads the command queue had no room for; retried every turn.
    unsent: Unsent,
    canary: String,
}

impl ShardedPubSub {
    /// Runs for ever.
    pub fn run(self) {
        let redis = &*self.redis;
        let Some(template) = redis.master.seeds.first().cloned() else {
            log::error!("Redis Cluster mode without seeds: nothing to subscribe");
            return;
        };
        let backoff = || Backoff::new(redis.config.backoff_min_ms, redis.config.backoff_max_ms);
        let mut t = Thread {
            redis,
            hub: &self.hub,
            clock: self.clock,
            beat: &self.beat,
            template,
            map: SlotMap::default(),
            shards: BTreeMap::new(),
            home: HashMap::new(),
            refresh_at: Some(Instant::now()),
            refreshed_at: Instant::now(),
            refresh_backoff: backoff(),
            unsent: Unsent::default(),
            canary: redis.names.canary(&redis.node),
        };
        self.hub.take_changes();
        for c in self.hub.wanted_channels() {
            t.home.insert(c, None);
        }
        loop {
            t.beat.stamp();
            t.refresh_if_due();
            t.connect_due();
            t.apply_changes();
            t.retry_unsent();
            if let Some((addr, chunk)) = t.wait_chunk() {
                t.on_chunk(&addr, chunk);
            }
            t.check_canaries();
            t.report();
        }
    }
}

impl Thread<'_> {
    fn new_shard(&self) -> Shard {
        let cfg = &self.redis.config;
        Shard {
            link: None,
            backoff: Backoff::new(cfg.backoff_min_ms, cfg.backoff_max_ms),
            quiet: Quiet::default(),
            reconnect_at: Instant::now(),
        }
    }

    /// Asks for a fresh slot map soon (at most every [`MIN_REFRESH`]).
    fn want_refresh(&mut self) {
        let soonest = self.refreshed_at + MIN_REFRESH;
        if self.refresh_at.is_none_or(|at| at > soonest) {
            self.refresh_at = Some(soonest);
        }
    }

    fn refresh_if_due(&mut self) {
        let now = Instant::now();
        let stale = now >= self.refreshed_at + REFRESH_EVERY;
        if !stale && self.refresh_at.is_none_or(|at| now < at) {
            return;
        }
        // Nodes we talk to first, then the seeds, then masters of old.
        let mut nodes: Vec<Addr> = self
            .shards
            .iter()
            .filter(|(_, s)| s.link.is_some())
            .map(|(a, _)| a.clone())
            .collect();
        let seeds = self.redis.master.seeds.iter();
        nodes.extend(seeds.map(|e| format!("{}:{}", e.host, e.port)));
        nodes.extend(self.map.masters());
        let mut seen = std::collections::HashSet::new();
        nodes.retain(|n| seen.insert(n.clone()));
        let timeout = Duration::from_millis(self.redis.config.timeout_ms);
        self.refreshed_at = Instant::now();
        let beat = self.beat;
        match slots::fetch(&nodes, &self.template, timeout, &|| beat.stamp()) {
            Ok(map) => {
                self.refresh_at = None;
                self.refresh_backoff.reset();
                self.set_map(map);
            }
            Err(e) => {
                let wait = self.refresh_backoff.next_wait();
                log::warn!("Redis Cluster slot map: {e}; asking again in {wait:?}");
                self.refresh_at = Some(Instant::now() + wait);
            }
        }
    }

    /// A new slot map: links to masters no longer in it close, and every
    /// channel goes to its slot's master.
    fn set_map(&mut self, map: SlotMap) {
        self.redis.shards.set_map(&map);
        let masters = map.masters();
        let gone: Vec<Addr> = (self.shards.keys())
            .filter(|a| !masters.contains(a))
            .cloned()
            .collect();
        for addr in gone {
            log::info!("Redis Cluster: {addr} serves no slot any more; closing its link");
            if let Some(shard) = self.shards.remove(&addr) {
                self.close(shard);
            }
        }
        for m in masters {
            if !self.shards.contains_key(&m) {
                let shard = self.new_shard();
                self.shards.insert(m, shard);
            }
        }
        self.map = map;
        let channels: Vec<Arc<str>> = self.home.keys().cloned().collect();
        self.place(channels);
    }

    /// Sends each channel to its slot's master: SUNSUBSCRIBE where it was,
    /// SSUBSCRIBE where it goes (when that link is up; else on connect).
    fn place(&mut self, channels: Vec<Arc<str>>) {
        let mut joins: BTreeMap<Addr, Vec<Arc<str>>> = BTreeMap::new();
        let mut failed = Vec::new();
        for c in channels {
            let owner = self.map.owner(slots::slot_of(&c)).cloned();
            let old = self.home.insert(c.clone(), owner.clone()).flatten();
            if let Some(old) = old.filter(|o| Some(o) != owner.as_ref()) {
                let names = &self.redis.names;
                let link = self.shards.get_mut(&old).and_then(|s| s.link.as_mut());
                if let Some(link) = link.filter(|l| l.subscribed.contains(&c)) {
                    if let Err(e) = link.unsubscribe(names, &c) {
                        failed.push((old, e));
                    }
                }
            }
            let Some(owner) = owner else { continue };
            let link = self.shards.get(&owner).and_then(|s| s.link.as_ref());
            if link.is_some_and(|l| !l.subscribed.contains(&c)) {
                joins.entry(owner).or_default().push(c);
            }
        }
        for (addr, list) in joins {
            let names = &self.redis.names;
            let link = self.shards.get_mut(&addr).and_then(|s| s.link.as_mut());
            if let Some(Err(e)) = link.map(|l| l.subscribe(names, &list)) {
                failed.push((addr, e));
            }
        }
        for (addr, why) in failed {
            self.lose(&addr, &why);
        }
    }

    /// Opens the links that are due: each subscribes the channels homed
    /// on its master.
    fn connect_due(&mut self) {
        let now = Instant::now();
        let due: Vec<Addr> = (self.shards.iter())
            .filter(|(_, s)| s.link.is_none() && s.reconnect_at <= now)
            .map(|(a, _)| a.clone())
            .collect();
        let timeout = Duration::from_millis(self.redis.config.timeout_ms);
        // The links share one backlog bound (4 MiB each at least).
        let backlog = (MAX_BACKLOG / self.shards.len().max(1)).max(4 << 20);
        for addr in due {
            self.beat.stamp();
            let opened = slots::endpoint_of(&addr, &self.template)
                .ok_or_else(|| format!("{addr:?} is no host:port"))
                .and_then(|ep| {
                    ShardLink::open(&ep, timeout, &self.canary, self.clock.now_ms(), backlog)
                });
            let mut link = match opened {
                Ok(link) => link,
                Err(e) => {
                    self.lose(&addr, &e);
                    continue;
                }
            };
            let mine: Vec<Arc<str>> = (self.home.iter())
                .filter(|(_, h)| h.as_ref() == Some(&addr))
                .map(|(c, _)| c.clone())
                .collect();
            let subscribed = link.subscribe(&self.redis.names, &mine);
            self.redis.link.connections.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "Redis Cluster: pub/sub link to {addr} up; subscribing {} channels",
                mine.len()
            );
            if let Some(shard) = self.shards.get_mut(&addr) {
                shard.link = Some(link);
            }
            if let Err(e) = subscribed {
                self.lose(&addr, &e);
            }
        }
    }

    /// A link failed (or could not be made): close it, try again with
    /// backoff, and read the slot map again (its master may be gone).
    fn lose(&mut self, addr: &str, why: &str) {
        let Some(shard) = self.shards.get_mut(addr) else {
            return;
        };
        let wait = shard.backoff.next_wait();
        shard.reconnect_at = Instant::now() + wait;
        shard.quiet.warn(format_args!(
            "Redis Cluster pub/sub link to {addr}: {why}; reconnecting in {wait:?}"
        ));
        if let Some(link) = shard.link.take() {
            // The reader thread has ended and the socket is closed once
            // this returns (see `Reader`'s drop).
            drop(link);
            self.redis.link.connections.fetch_sub(1, Ordering::Relaxed);
        }
        self.redis.link.reconnects.fetch_add(1, Ordering::Relaxed);
        self.redis.shards.update(addr, |r| r.reconnects += 1);
        self.want_refresh();
    }

    fn close(&self, shard: Shard) {
        if shard.link.is_some() {
            drop(shard);
            self.redis.link.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn apply_changes(&mut self) {
        let changes = self.hub.take_changes();
        if changes.is_empty() {
            return;
        }
        let mut add = Vec::new();
        let mut failed = Vec::new();
        for (channel, wanted) in changes {
            let home = self.home.get(&channel).cloned();
            match (wanted, home) {
                (true, None) => add.push(channel),
                (true, Some(h)) => {
                    // Still subscribed from before: Redis will not confirm
                    // again, so the load starts now.
                    if self
                        .link_of(&h)
                        .is_some_and(|l| l.subscribed.contains(&channel))
                    {
                        self.start_load(channel);
                    }
                }
                (false, Some(h)) => {
                    self.home.remove(&channel);
                    let names = &self.redis.names;
                    let link = self.shards.get_mut(h.as_deref().unwrap_or_default());
                    let link = link.and_then(|s| s.link.as_mut());
                    if let Some(l) = link.filter(|l| l.subscribed.contains(&channel)) {
                        if let Err(e) = l.unsubscribe(names, &channel) {
                            failed.extend(h.map(|a| (a, e)));
                        }
                    }
                }
                (false, None) => {}
            }
        }
        for (addr, why) in failed {
            self.lose(&addr, &why);
        }
        self.place(add);
    }

    fn link_of(&self, home: &Option<Addr>) -> Option<&ShardLink> {
        let shard = self.shards.get(home.as_deref()?)?;
        shard.link.as_ref()
    }

    fn start_load(&mut self, channel: Arc<str>) {
        self.unsent.start(self.hub, self.redis, channel);
    }

    fn retry_unsent(&mut self) {
        self.unsent.retry(self.redis);
    }

    /// The next chunk any link read, waiting [`READ_TIMEOUT`] at most.
    /// The receivers are clones, dropped before this returns (a link's
    /// teardown relies on its receiver being the last one).
    fn wait_chunk(&self) -> Option<(Addr, Chunk)> {
        let live: Vec<(Addr, Receiver<Chunk>)> = (self.shards.iter())
            .filter_map(|(a, s)| {
                s.link
                    .as_ref()
                    .map(|l| (a.clone(), l.reader.chunks.clone()))
            })
            .collect();
        if live.is_empty() {
            std::thread::sleep(READ_TIMEOUT);
            return None;
        }
        let mut select = Select::new();
        for (_, rx) in &live {
            select.recv(rx);
        }
        let op = select.select_timeout(READ_TIMEOUT).ok()?;
        let (addr, rx) = live.get(op.index())?;
        let chunk = op
            .recv(rx)
            .unwrap_or_else(|_| Err("the reader stopped".into()));
        Some((addr.clone(), chunk))
    }

    fn on_chunk(&mut self, addr: &str, chunk: Chunk) {
        let names = &self.redis.names;
        let Some(link) = self.shards.get_mut(addr).and_then(|s| s.link.as_mut()) else {
            return;
        };
        let heard = chunk.and_then(|bytes| {
            let n = bytes.len() as u64;
            link.reader.queued.fetch_sub(n, Ordering::Relaxed);
            link.take(names, &bytes)
        });
        match heard {
            Ok(heard) => {
                for h in heard {
                    self.on_heard(addr, h);
                }
            }
            Err(why) => self.lose(addr, &why),
        }
    }

    fn on_heard(&mut self, addr: &str, heard: Heard) {
        let homed_here =
            |t: &Self, c: &Arc<str>| t.home.get(c).is_some_and(|h| h.as_deref() == Some(addr));
        match heard {
            Heard::Message(name, payload) => self.on_message(addr, &name, &payload),
            Heard::Subscribed(c) if homed_here(self, &c) => self.start_load(c),
            Heard::Dropped(c) if homed_here(self, &c) => {
                log::info!(
                    "Redis Cluster: {addr} no longer serves {c:?} (its slot moved); following it"
                );
                self.redis.shards.update(addr, |r| r.redirects += 1);
                self.home.insert(c, None);
                self.want_refresh();
            }
            Heard::Redirected(c, target) if homed_here(self, &c) => {
                log::info!(
                    "Redis Cluster: SSUBSCRIBE {c:?} on {addr} was redirected to {target:?}"
                );
                self.redis.shards.update(addr, |r| r.redirects += 1);
                // The named master, if we know it; else wait for the map.
                let known = target.filter(|t| self.shards.contains_key(t));
                let names = &self.redis.names;
                let link = known.as_ref().and_then(|t| self.shards.get_mut(t));
                if let Some(Err(e)) = link
                    .and_then(|s| s.link.as_mut())
                    .map(|l| l.subscribe(names, std::slice::from_ref(&c)))
                {
                    let t = known.clone().unwrap_or_default();
                    self.lose(&t, &e);
                }
                // The map is stale either way (other channels of the slot,
                // and the publish latency's shard, follow it).
                self.want_refresh();
                self.home.insert(c, known);
            }
            _ => {}
        }
    }

    fn on_message(&mut self, addr: &str, name: &str, payload: &[u8]) {
        let now = self.clock.now_ms();
        let link = &self.redis.link;
        if name == self.canary {
            let sent = std::str::from_utf8(payload)
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            let (Some(sent), Some(shard)) = (sent, self.shards.get_mut(addr)) else {
                return;
            };
            let rtt = now.saturating_sub(sent);
            link.canary_rtt_ms.store(rtt, Ordering::Relaxed);
            let ok = rtt <= self.redis.config.ready_within_ms;
            if ok {
                link.canary_ok_ms.store(now.max(1), Ordering::Release);
            }
            if let Some(l) = shard.link.as_mut() {
                (l.canary_seen_ms, l.canary_ok, l.worked) = (now, ok, true);
                // Only a link that worked starts the backoff over.
                shard.backoff.reset();
                shard.quiet.reset();
            }
            return;
        }
        receive(self.redis, self.hub, name, payload, now);
    }

    /// A link whose canary stops coming back while the command side is
    /// up is stuck (say, its node is paused): start it over.
    fn check_canaries(&mut self) {
        let cfg = &self.redis.config;
        let now = self.clock.now_ms();
        let command_up = self.redis.link.command_up.load(Ordering::Acquire);
        let mut stuck = Vec::new();
        for (addr, shard) in &mut self.shards {
            let Some(link) = shard.link.as_mut() else {
                continue;
            };
            let silent = now.saturating_sub(link.canary_seen_ms);
            if silent > 2 * cfg.ready_within_ms && command_up {
                stuck.push((addr.clone(), format!("no canary for {silent} ms")));
            } else if silent > cfg.ready_within_ms {
                link.canary_ok = false;
            }
        }
        for (addr, why) in stuck {
            self.lose(&addr, &why);
        }
    }

    /// Readiness, the hub's link state and the figures, from the links.
    fn report(&mut self) {
        let link = &self.redis.link;
        let all_ok = !self.shards.is_empty()
            && (self.shards.values()).all(|s| s.link.as_ref().is_some_and(|l| l.canary_ok));
        let was = link.pubsub_up.swap(all_ok, Ordering::AcqRel);
        if all_ok && !was {
            log::info!("Redis Cluster: all {} shard links up", self.shards.len());
        }
        if all_ok && !self.hub.link_is_up() {
            self.hub.set_link(true);
        }
        if self.shards.values().all(|s| s.link.is_none()) && self.hub.link_is_up() {
            // Redis is gone altogether, as in single-server mode: loads
            // stop, and each link that comes back reloads its channels.
            self.hub.set_link(false);
        }
        let (mut subscribed, mut backlog) = (0, 0);
        for (addr, shard) in &self.shards {
            let (up, channels) = match &shard.link {
                Some(l) => (l.canary_ok, l.subscribed.len() as u64),
                None => (false, 0),
            };
            subscribed += channels;
            backlog += shard.link.as_ref().map_or(0, ShardLink::backlog);
            self.redis
                .shards
                .update(addr, |r| (r.up, r.channels) = (up, channels));
        }
        link.subscribed.store(subscribed, Ordering::Relaxed);
        link.backlog_bytes.store(backlog, Ordering::Relaxed);
    }
}
