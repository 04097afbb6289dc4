//! Cluster mode (market feed with Redis): one upstream connection for the
//! whole cluster.
//!
//! - Every node with `trades:*` subscribers writes its symbols into Redis
//!   (`<prefix>market:interest`, entries that expire after `lease_ms`
//!   unless refreshed, so a dead node stops counting).
//! - One node holds the lease (`<prefix>market:lease`, `SET NX PX`, value
//!   "<node> <fencing token>", the token from a counter that only grows).
//!   The holder alone connects upstream, subscribes the union of every
//!   node's interest, and republishes trades through the normal publish
//!   script, which refuses a publish unless the lease still holds the
//!   holder's value: a node that lost its lease cannot publish after
//!   another took it.
//! - The holder renews every third of `lease_ms` and closes its upstream
//!   connection once `lease_ms` minus a tenth has passed since the start
//!   of its last successful renewal. The key cannot expire before that
//!   (its TTL starts when Redis runs the renewal, later), so no other node
//!   can hold the lease, and connect with the same API key, while this
//!   one may still be connected. A holder killed outright loses its
//!   upstream socket with its process; another node takes the lease when
//!   the key expires, trying again right then (it reads the remaining TTL).
//! - The holder writes the upstream's status (refused symbols, breaker)
//!   with each renewal; every node tells its own subscribers.
//! - Redis Cluster: the market keys share the `{market}` hash tag, so the
//!   lease and interest scripts run on that slot's master. A trade's
//!   channel is in another slot, so its publish cannot read the lease:
//!   it is fenced by the channel's highest token instead (`republish`),
//!   and before a batch the holder reads the lease back (at most every
//!   [`LEASE_CHECK`]), closing its upstream the moment it sees another
//!   value; the timing rule above is unchanged.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::{RedisError, Script};
use serde_json::json;

use crate::bridge::wire::{self, PublishArgs};
use crate::bridge::{Master, Quiet, Retention};
use crate::hub::{Hub, MARKET_PREFIX};
use crate::link::{MarketLink, Names, Publish};
use crate::market::republish::{self, Con, Refused};

/// Symbols one node writes into the shared interest, at most.
const MAX_INTEREST: usize = 4096;
/// Redis Cluster: the holder reads the lease key back before a batch of
/// trades when it last did longer ago than this (or a tenth of the
/// lease, if shorter).
const LEASE_CHECK: Duration = Duration::from_millis(100);

fn lease_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("scripts/lease.lua")))
}

fn step_aside_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("scripts/step_aside.lua")))
}

fn interest_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("scripts/interest.lua")))
}

/// What the cluster coordination needs.
pub struct ClusterParts {
    /// Where the master is (it moves under Sentinel; read at each connect).
    pub master: Arc<Master>,
    pub names: Names,
    pub node: String,
    pub lease_ms: u64,
    pub retention: Retention,
    pub hub: Arc<Hub>,
    pub link: Arc<MarketLink>,
}

/// The lease as this node holds it.
struct Held {
    /// "<node> <fencing token>", the lease key's value.
    value: String,
    /// The upstream must be closed by then.
    valid_until: Instant,
}

/// The upstream's status as the holder writes it.
#[derive(Debug, Default, PartialEq)]
pub struct Status {
    pub refused: BTreeSet<String>,
    pub breaker: bool,
}

/// One node's side of the cluster's market coordination (its own Redis
/// connection, opened at the first `trades:*` subscriber).
pub struct Cluster {
    parts: ClusterParts,
    con: Option<Con>,
    held: Option<Held>,
    /// Redis Cluster: when the lease was last read back as this node's.
    checked: Option<Instant>,
    /// Redis Cluster: publishes that failed, logged now and then.
    quiet: Quiet,
    /// This node's symbols as last written.
    written: HashSet<Arc<str>>,
    /// Every node's symbols as last read.
    union: BTreeSet<Arc<str>>,
    /// What the holder reports, to write with the next renewal.
    pub own_status: Status,
    /// Refused symbols this node's subscribers were told about.
    told: HashSet<String>,
    breaker_told: bool,
    next_turn: Instant,
    /// When the lease may be free (from its remaining TTL).
    free_at: Option<Instant>,
}

impl Cluster {
    pub fn new(parts: ClusterParts) -> Cluster {
        Cluster {
            parts,
            con: None,
            held: None,
            checked: None,
            quiet: Quiet::default(),
            written: HashSet::new(),
            union: BTreeSet::new(),
            own_status: Status::default(),
            told: HashSet::new(),
            breaker_told: false,
            next_turn: Instant::now(),
            free_at: None,
        }
    }

    /// Every third of the lease.
    fn period(&self) -> Duration {
        Duration::from_millis((self.parts.lease_ms / 3).max(1))
    }

    pub fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// The symbols any node wants, as last read.
    pub fn wanted(&self) -> impl Iterator<Item = &Arc<str>> {
        self.union.iter()
    }

    /// How long until the next turn is due (to sleep no longer).
    pub fn until_due(&self) -> Duration {
        let due = match self.free_at {
            Some(free) if !self.holds() => self.next_turn.min(free),
            _ => self.next_turn,
        };
        due.saturating_duration_since(Instant::now())
    }

    /// Refreshes this node's interest, reads everyone's and the status,
    /// renews the lease or (with `take`) takes it if free. `Err` when
    /// this node held the lease and no longer does: its upstream
    /// connection must close now.
    pub fn turn(&mut self, take: bool) -> Result<(), String> {
        let held_before = self.holds();
        if let Some(held) = &self.held {
            if Instant::now() >= held.valid_until {
                return Err(self.lose("the market lease could not be renewed in time"));
            }
        }
        if Instant::now() < self.next_turn && self.free_at.is_none_or(|t| Instant::now() < t) {
            return Ok(());
        }
        self.next_turn = Instant::now() + self.period();
        self.free_at = None;
        if let Err(e) = self.exchange(take) {
            self.con = None;
            log::warn!("market lease: Redis: {e}");
        }
        match (held_before, self.holds()) {
            (true, false) => Err(self.lose("the market lease was lost")),
            _ => Ok(()),
        }
    }

    /// One round of Redis work: interest, then the lease.
    fn exchange(&mut self, take: bool) -> Result<(), RedisError> {
        self.connection()?;
        self.write_interest()?;
        self.renew_or_take(take)
    }

    fn write_interest(&mut self) -> Result<(), RedisError> {
        let mut local: Vec<Arc<str>> = self
            .parts
            .hub
            .market_interest()
            .iter()
            .filter_map(|c| c.strip_prefix(MARKET_PREFIX).map(Arc::from))
            .collect();
        if local.len() > MAX_INTEREST {
            log::warn!(
                "market: {} symbols wanted here; the first {MAX_INTEREST} are shared with the cluster",
                local.len()
            );
            local.sort();
            local.truncate(MAX_INTEREST);
        }
        // A set for the lookup: up to MAX_INTEREST symbols on each side.
        let now_wanted: HashSet<&Arc<str>> = local.iter().collect();
        let gone: Vec<Arc<str>> = self
            .written
            .iter()
            .filter(|s| !now_wanted.contains(s))
            .cloned()
            .collect();
        let Some(con) = self.con.as_mut() else {
            return Ok(());
        };
        let names = &self.parts.names;
        let (members, status): (Vec<String>, String) = interest_script()
            .key(names.market_interest())
            .key(names.market_status())
            .arg(&self.parts.node)
            .arg(self.parts.lease_ms)
            .arg(local.len())
            .arg(local.iter().map(|s| s.as_ref()).collect::<Vec<&str>>())
            .arg(gone.iter().map(|s| s.as_ref()).collect::<Vec<&str>>())
            .invoke(con.as_mut())?;
        self.written = local.into_iter().collect();
        self.union = members
            .iter()
            .filter_map(|m| m.split_once('|').map(|(_, s)| Arc::from(s)))
            .collect();
        self.tell(parse_status(&status));
        Ok(())
    }

    fn renew_or_take(&mut self, take: bool) -> Result<(), RedisError> {
        let status = match self.holds() {
            true => self.status_json(),
            false => String::new(),
        };
        let take = if take || self.holds() { "1" } else { "0" };
        let Some(con) = self.con.as_mut() else {
            return Ok(());
        };
        let names = &self.parts.names;
        let sent = Instant::now();
        let (mine, value, ttl_ms): (i64, String, i64) = lease_script()
            .key(names.market_lease())
            .key(names.market_fence())
            .key(names.market_status())
            .arg(&self.parts.node)
            .arg(self.parts.lease_ms)
            .arg(take)
            .arg(status)
            .invoke(con.as_mut())?;
        let link = &self.parts.link;
        link.fence.store(fence_of(&value), Ordering::Relaxed);
        if mine != 1 {
            self.held = None;
            // Try again right when it expires (a lease with no expiry,
            // set by hand, waits for the usual turn).
            self.free_at = u64::try_from(ttl_ms)
                .ok()
                .filter(|&ms| ms > 0)
                .map(|ms| Instant::now() + Duration::from_millis(ms + 1));
            return Ok(());
        }
        let lease = Duration::from_millis(self.parts.lease_ms);
        let valid_until = sent + lease - lease / 10;
        if self.held.as_ref().is_none_or(|h| h.value != value) {
            log::info!("market lease taken: this node ({value}) holds the upstream");
            link.leases_taken.fetch_add(1, Ordering::Relaxed);
        }
        link.lease_held.store(true, Ordering::Relaxed);
        self.held = Some(Held { value, valid_until });
        // The renewal read the lease as this node's.
        self.checked = Some(sent);
        Ok(())
    }

    /// The lease is gone: say why; the caller closes the upstream.
    fn lose(&mut self, why: &str) -> String {
        self.held = None;
        self.checked = None;
        self.parts.link.lease_held.store(false, Ordering::Relaxed);
        log::warn!("{why}: closing the upstream connection");
        why.to_string()
    }

    fn status_json(&self) -> String {
        json!({"refused": self.own_status.refused, "breaker": self.own_status.breaker}).to_string()
    }

    /// Tells this node's subscribers what the holder reports: a symbol
    /// refused (once per refusal) and the breaker opening (once).
    fn tell(&mut self, status: Status) {
        let hub = &self.parts.hub;
        let local = hub.market_interest();
        self.told.retain(|s| status.refused.contains(s));
        for symbol in &status.refused {
            let Some(channel) = local
                .iter()
                .find(|c| c.strip_prefix(MARKET_PREFIX) == Some(symbol.as_str()))
            else {
                continue;
            };
            if self.told.contains(symbol) {
                continue;
            }
            self.told.insert(symbol.clone());
            let message = format!(
                "{symbol}: the upstream plan's symbol limit is reached; it is subscribed once a slot frees"
            );
            hub.channel_error(channel, "symbol_limit", &message);
        }
        if status.breaker && !self.breaker_told {
            let message = "the market upstream is unreachable; trades resume when it is back";
            for channel in &local {
                hub.channel_error(channel, "upstream_unavailable", message);
            }
        }
        self.breaker_told = status.breaker;
    }

    /// Republishes one upstream message's trades (one event per symbol)
    /// through Redis, fenced (see `republish`). `Err` ends the upstream
    /// connection: the lease is lost, or (one server) Redis cannot take
    /// them.
    pub fn publish(&mut self, events: Vec<(String, String)>) -> Result<(), String> {
        let value = match &self.held {
            Some(held) if Instant::now() < held.valid_until => held.value.clone(),
            Some(_) => return Err(self.lose("the market lease could not be renewed in time")),
            None => return Err("the market lease is not held".into()),
        };
        let clustered = self.parts.names.is_cluster();
        if clustered {
            self.check_lease(&value)?;
        }
        if let Err(e) = self.connection() {
            return self.failed(e, clustered);
        }
        let Some(con) = self.con.as_mut() else {
            return Err("no Redis connection".into());
        };
        let batch: Vec<Publish> = events
            .into_iter()
            .map(|(channel, data)| Publish {
                channel,
                data,
                publish_id: None,
            })
            .collect();
        let args = PublishArgs {
            names: &self.parts.names,
            retention: self.parts.retention,
        };
        let done = match clustered {
            true => republish::publish_by_token(con, &args, &batch, fence_of(&value)),
            false => republish::publish_by_lease(con, &args, &batch, &value),
        };
        match done {
            Ok(()) => Ok(()),
            Err(Refused::Fenced(Some(highest))) => {
                self.step_aside(&value, highest);
                Err(self.lose("a newer market lease holder published trades"))
            }
            Err(Refused::Fenced(None)) => Err(self.lose("another node holds the market lease")),
            Err(Refused::Failed(e)) => self.failed(e, clustered),
        }
    }

    /// Redis Cluster: a channel refused this holder's trades for a higher
    /// token. The lease is given up (if still this node's) and the counter
    /// raised past that token, so whoever takes the lease next publishes
    /// (a lost counter would otherwise fence every holder for good).
    fn step_aside(&mut self, value: &str, highest: u64) {
        let names = &self.parts.names;
        let Some(con) = self.con.as_mut() else {
            return;
        };
        let freed: Result<i64, RedisError> = step_aside_script()
            .key(names.market_lease())
            .key(names.market_fence())
            .arg(value)
            .arg(highest)
            .invoke(con.as_mut());
        match freed {
            // Free now: the next turn may take it at once.
            Ok(1) => self.free_at = Some(Instant::now()),
            Ok(_) => {}
            Err(e) => log::warn!("market lease: giving it up: {e}"),
        }
    }

    /// Redis failed to take trades. One server: the upstream closes. Redis
    /// Cluster: one shard failing stops its channels' trades, not the
    /// upstream (the lease turn keeps to the timing rule meanwhile).
    fn failed(&mut self, e: RedisError, clustered: bool) -> Result<(), String> {
        if !clustered {
            self.con = None;
            return Err(format!("republishing trades through Redis: {e}"));
        }
        if wire::link_failed(&e) {
            self.con = None;
        }
        self.quiet.warn(format_args!(
            "market: republishing trades through Redis Cluster: {e}"
        ));
        Ok(())
    }

    /// Redis Cluster: reads the lease back (at most every [`LEASE_CHECK`]),
    /// making the connection again if it was lost. `Err` (the upstream
    /// closes) when it holds another value; a Redis failure leaves the
    /// decision to the lease turn and its timing rule.
    fn check_lease(&mut self, value: &str) -> Result<(), String> {
        let every = LEASE_CHECK.min(Duration::from_millis(self.parts.lease_ms / 10));
        if self.checked.is_some_and(|t| t.elapsed() < every) {
            return Ok(());
        }
        let began = Instant::now();
        let key = self.parts.names.market_lease();
        let read = self.connection().and_then(|con| {
            redis::cmd("GET")
                .arg(key)
                .query::<Option<String>>(con.as_mut())
        });
        match read {
            Ok(Some(v)) if v == value => {
                self.checked = Some(began);
                Ok(())
            }
            Ok(_) => Err(self.lose("the market lease was taken")),
            Err(e) => {
                if wire::link_failed(&e) {
                    self.con = None;
                }
                self.quiet
                    .warn(format_args!("market: reading the lease back: {e}"));
                Ok(())
            }
        }
    }

    /// The connection, made first if there is none.
    fn connection(&mut self) -> Result<&mut Con, RedisError> {
        if self.con.is_none() {
            let cluster = self.parts.names.is_cluster();
            self.con = Some(republish::connect(
                &self.parts.master,
                cluster,
                self.io_timeout(),
            )?);
        }
        self.con
            .as_mut()
            .ok_or_else(|| RedisError::from((redis::ErrorKind::Io, "no connection")))
    }

    /// Connect, read and write timeout of the connection.
    fn io_timeout(&self) -> Duration {
        self.period()
            .clamp(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// Fds this coordination holds.
    pub fn fds(&self) -> u64 {
        u64::from(self.con.is_some())
    }
}

/// The fencing token in a lease value "<node> <token>" (0: none).
fn fence_of(value: &str) -> u64 {
    value
        .rsplit_once(' ')
        .and_then(|(_, t)| t.parse().ok())
        .unwrap_or(0)
}

/// The holder's status; an absent or unreadable one reports nothing.
fn parse_status(text: &str) -> Status {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return Status::default();
    };
    let refused = v["refused"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Status {
        refused,
        breaker: v["breaker"].as_bool().unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_and_statuses_read_back() {
        assert_eq!(fence_of("4711-abc 17"), 17);
        assert_eq!(fence_of(""), 0);
        assert_eq!(fence_of("node x"), 0);
        let s = parse_status(r#"{"refused":["ZZZ"],"breaker":true}"#);
        assert!(s.breaker && s.refused.contains("ZZZ"));
        assert_eq!(parse_status(""), Status::default());
        assert_eq!(parse_status("[1]"), Status::default());
    }
}
