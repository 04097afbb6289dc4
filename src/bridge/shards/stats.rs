//! Per-shard figures of Redis Cluster mode, shared by the sharded pub/sub
//! thread (link state, channels, reconnects, redirects), the command
//! thread (publish latency) and the metrics page.
//!
//! One row per master of the current slot map, keyed by its address: the
//! label set is bounded by the cluster's shards. A row follows its shard:
//! a master new to the map that serves slots of one that left it (a
//! promoted replica) takes over that row, counters and all, so a
//! failover's reconnects, and publishes timed while the map still named
//! the dead master, stay with the shard.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::slots::{Addr, SlotMap};

/// Upper bounds of the publish latency buckets, in milliseconds.
pub const LATENCY_BUCKETS_MS: [u64; 7] = [1, 2, 5, 10, 50, 250, 1000];

/// One shard's figures.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShardFigures {
    /// The subscriber link is connected and its canary returns.
    pub up: bool,
    /// Channels SSUBSCRIBEd on the link.
    pub channels: u64,
    /// Links lost (or refused) and tried again.
    pub reconnects: u64,
    /// `MOVED`/`ASK` answers and server-pushed `sunsubscribe`s (a slot
    /// that moved away) the subscriber followed.
    pub redirects: u64,
    /// Publishes per latency bucket (the last one: slower than all).
    pub latency_buckets: [u64; LATENCY_BUCKETS_MS.len() + 1],
    pub latency_sum_us: u64,
    pub latency_count: u64,
    /// Pipelines of publishes sent to the shard's master (one round
    /// trip each).
    pub publish_pipelines: u64,
}

#[derive(Debug, Default)]
struct Table {
    rows: BTreeMap<Addr, ShardFigures>,
    map: SlotMap,
}

/// The shared table.
#[derive(Debug, Default)]
pub struct ShardStats {
    table: Mutex<Table>,
}

impl ShardStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Plain counters: a panic elsewhere cannot leave them half-written.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new slot map: a row for each of its masters, none for others; a
    /// new master takes over the row of a master gone from the map that
    /// served one of its slots.
    pub fn set_map(&self, map: &SlotMap) {
        let mut t = self.lock();
        let masters = map.masters();
        let gone: Vec<Addr> = (t.rows.keys())
            .filter(|a| !masters.contains(a))
            .cloned()
            .collect();
        let mut gone: Vec<(Addr, ShardFigures)> = (gone.into_iter())
            .filter_map(|a| t.rows.remove(&a).map(|row| (a, row)))
            .collect();
        for m in masters {
            if t.rows.contains_key(&m) {
                continue;
            }
            let heir = gone
                .iter()
                .position(|(old, _)| t.map.shares_slots(old, map, &m));
            let row = heir.map(|at| gone.swap_remove(at).1).unwrap_or_default();
            t.rows.insert(m, row);
        }
        t.map = map.clone();
    }

    /// Changes the row of `addr`, if it is a master of the map.
    pub fn update(&self, addr: &str, f: impl FnOnce(&mut ShardFigures)) {
        if let Some(row) = self.lock().rows.get_mut(addr) {
            f(row);
        }
    }

    /// A batch of publishes to channels of `slots` took `took` in all
    /// (one pipeline per master): each is timed at that, and each master
    /// the batch touched (as the map last said) counts one pipeline.
    pub fn publish_batch(&self, slots: &[u16], took: Duration) {
        let mut t = self.lock();
        let mut touched: Vec<Addr> = Vec::new();
        for slot in slots {
            let Some(addr) = t.map.owner(*slot).cloned() else {
                continue;
            };
            let Some(row) = t.rows.get_mut(&addr) else {
                continue;
            };
            let ms = took.as_millis() as u64;
            let at = LATENCY_BUCKETS_MS
                .iter()
                .position(|le| ms < *le)
                .unwrap_or(LATENCY_BUCKETS_MS.len());
            row.latency_buckets[at] += 1;
            row.latency_sum_us += took.as_micros() as u64;
            row.latency_count += 1;
            if !touched.contains(&addr) {
                row.publish_pipelines += 1;
                touched.push(addr);
            }
        }
    }

    /// Every row, by address.
    pub fn rows(&self) -> Vec<(Addr, ShardFigures)> {
        let t = self.lock();
        t.rows.iter().map(|(a, f)| (a.clone(), f.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_map_and_latency_lands_in_buckets() {
        let stats = ShardStats::default();
        let map = |owners: &[(u16, u16, &str)]| {
            SlotMap::from_ranges(
                owners
                    .iter()
                    .map(|(a, b, s)| (*a, *b, s.to_string()))
                    .collect(),
            )
        };
        stats.set_map(&map(&[(0, 8191, "h:1"), (8192, 16383, "h:2")]));
        stats.update("h:1", |r| r.reconnects += 1);
        stats.publish_batch(&[10], Duration::from_micros(1500));
        stats.publish_batch(&[10, 9000], Duration::from_millis(3000));
        stats.publish_batch(&[9000], Duration::from_micros(200));
        let rows = stats.rows();
        assert_eq!(rows.len(), 2);
        let (_, one) = &rows[0];
        assert_eq!(
            (one.reconnects, one.latency_count, one.latency_sum_us),
            (1, 2, 3_001_500)
        );
        assert_eq!(one.latency_buckets, [0, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(rows[1].1.latency_buckets[0], 1);
        // One pipeline per master a batch touched.
        assert_eq!((one.publish_pipelines, rows[1].1.publish_pipelines), (2, 2));
        // h:2 fails over to h:3, which takes over its row.
        stats.update("h:2", |r| r.reconnects += 2);
        stats.set_map(&map(&[(0, 8191, "h:1"), (8192, 16383, "h:3")]));
        let rows = stats.rows();
        let addrs: Vec<&str> = rows.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(addrs, ["h:1", "h:3"]);
        assert_eq!((rows[0].1.reconnects, rows[1].1.reconnects), (1, 2));
        assert_eq!(rows[1].1.latency_count, 2);
        stats.update("h:2", |r| r.reconnects += 1);
        assert_eq!(stats.rows().len(), 2);
        // A master new to the map with slots no gone master had: a fresh row.
        stats.set_map(&map(&[
            (0, 8191, "h:1"),
            (8192, 12000, "h:3"),
            (12001, 16383, "h:4"),
        ]));
        assert_eq!(stats.rows()[2].1, ShardFigures::default());
    }
}
