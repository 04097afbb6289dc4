//! Which master serves which hash slot: the cluster's slot map as
//! `CLUSTER SLOTS` tells it, and the slot of a channel (CRC16 of its
//! hash tag, which in cluster mode is the channel itself).

use std::time::Duration;

use redis::{RedisError, Value};

use super::super::wire::{connect, text};
use super::super::Endpoint;

/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// A master, as `host:port` (the label of its metrics).
pub type Addr = String;

/// Slot ranges and their masters, sorted by first slot.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SlotMap {
    ranges: Vec<(u16, u16, Addr)>,
}

impl SlotMap {
    pub fn from_ranges(mut ranges: Vec<(u16, u16, Addr)>) -> SlotMap {
        ranges.sort_unstable();
        SlotMap { ranges }
    }

    /// The master serving `slot`, if any does.
    pub fn owner(&self, slot: u16) -> Option<&Addr> {
        let at = self.ranges.partition_point(|(first, _, _)| *first <= slot);
        let (first, last, addr) = self.ranges.get(at.checked_sub(1)?)?;
        (*first <= slot && slot <= *last).then_some(addr)
    }

    /// Every master, once each, in slot order.
    pub fn masters(&self) -> Vec<Addr> {
        let mut out: Vec<Addr> = Vec::new();
        for (_, _, addr) in &self.ranges {
            if !out.contains(addr) {
                out.push(addr.clone());
            }
        }
        out
    }

    /// `a` here serves a slot that `b` serves in `other`.
    pub fn shares_slots(&self, a: &str, other: &SlotMap, b: &str) -> bool {
        let mine = self.ranges.iter().filter(|(_, _, m)| m == a);
        mine.into_iter().any(|(f, l, _)| {
            let theirs = other.ranges.iter().filter(|(_, _, m)| m == b);
            theirs.into_iter().any(|(of, ol, _)| f <= ol && of <= l)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// The slot of a channel's keys: CRC16 (XMODEM) of the hash tag, which
/// is the channel (`<prefix>{<channel>}:…`), modulo 16,384.
pub fn slot_of(channel: &str) -> u16 {
    crc16(channel.as_bytes()) % SLOTS
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = match crc & 0x8000 {
                0 => crc << 1,
                _ => (crc << 1) ^ 0x1021,
            };
        }
    }
    crc
}

/// Asks each of `nodes` in turn for the slot map; the first answer wins.
/// `template` gives the credentials; `before_each` runs before each try
/// (each may take `timeout`: the caller stamps its heartbeat there).
pub fn fetch(
    nodes: &[Addr],
    template: &Endpoint,
    timeout: Duration,
    before_each: &dyn Fn(),
) -> Result<SlotMap, String> {
    let mut last = String::from("no node to ask");
    for node in nodes {
        before_each();
        let Some(endpoint) = endpoint_of(node, template) else {
            continue;
        };
        let reply = connect(&endpoint, timeout)
            .and_then(|mut con| redis::cmd("CLUSTER").arg("SLOTS").query::<Value>(&mut con));
        match reply
            .map_err(|e: RedisError| e.to_string())
            .and_then(|v| parse(&v, &endpoint.host))
        {
            Ok(map) if !map.is_empty() => return Ok(map),
            Ok(_) => last = format!("{node}: CLUSTER SLOTS is empty"),
            Err(e) => last = format!("{node}: {e}"),
        }
    }
    Err(last)
}

/// `host:port` with `template`'s credentials (database 0: a cluster has
/// no other).
pub fn endpoint_of(addr: &str, template: &Endpoint) -> Option<Endpoint> {
    let (host, port) = addr.rsplit_once(':')?;
    Some(Endpoint {
        host: host.to_string(),
        port: port.parse().ok()?,
        db: 0,
        ..template.clone()
    })
}

/// Reads a `CLUSTER SLOTS` reply: `[[first, last, [host, port, id, …],
/// replicas…], …]`. A master announced without a host is the node asked.
fn parse(reply: &Value, asked: &str) -> Result<SlotMap, String> {
    let bad = || "unexpected CLUSTER SLOTS reply".to_string();
    let Value::Array(entries) = reply else {
        return Err(bad());
    };
    let mut ranges = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err(bad());
        };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            return Err(bad());
        };
        let host = master.first().and_then(text).unwrap_or_default();
        let host = if host.is_empty() || host == "?" {
            asked
        } else {
            host
        };
        let Some(Value::Int(port)) = master.get(1) else {
            return Err(bad());
        };
        let in_range = |n: i64| u16::try_from(n).ok().filter(|s| *s < SLOTS);
        let (Some(first), Some(last)) = (in_range(*first), in_range(*last)) else {
            return Err(bad());
        };
        ranges.push((first, last, format!("{host}:{port}")));
    }
    Ok(SlotMap::from_ranges(ranges))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_cluster_spec() {
        // The Redis Cluster specification's CRC16 check value.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        // `CLUSTER KEYSLOT foo` and `{user1000}.following` answer these.
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("user1000"), 3443);
    }

    #[test]
    fn owners_by_range() {
        let a = |s: &str| s.to_string();
        let map = SlotMap::from_ranges(vec![
            (5461, 10922, a("h:2")),
            (0, 5460, a("h:1")),
            (12000, 16383, a("h:3")),
            (10923, 11999, a("h:1")),
        ]);
        let table = [
            (0, "h:1"),
            (5460, "h:1"),
            (5461, "h:2"),
            (11000, "h:1"),
            (16383, "h:3"),
        ];
        for (slot, want) in table {
            assert_eq!(map.owner(slot).map(String::as_str), Some(want), "{slot}");
        }
        assert_eq!(map.masters(), vec![a("h:1"), a("h:2"), a("h:3")]);
        let after = SlotMap::from_ranges(vec![(0, 5460, a("h:9")), (5461, 16383, a("h:3"))]);
        assert!(map.shares_slots("h:1", &after, "h:9"));
        assert!(!map.shares_slots("h:2", &after, "h:9"));
        assert!(map.shares_slots("h:2", &after, "h:3"));
        let gap = SlotMap::from_ranges(vec![(10, 20, a("h:1"))]);
        assert_eq!((gap.owner(9), gap.owner(21)), (None, None));
    }

    #[test]
    fn cluster_slots_replies() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8191),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7003),
            ]),
            Value::Array(vec![Value::Int(8192), Value::Int(16383), node("", 7001)]),
        ]);
        let map = parse(&reply, "10.0.0.9").unwrap();
        assert_eq!(map.owner(100).map(String::as_str), Some("10.0.0.1:7000"));
        assert_eq!(map.owner(9000).map(String::as_str), Some("10.0.0.9:7001"));
        let out_of_range = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16384),
            node("h", 1),
        ])]);
        assert!(parse(&out_of_range, "h").is_err());
        assert!(parse(&Value::Nil, "h").is_err());
        let template = Endpoint::parse("redis://:pw@seed:1").unwrap();
        let e = endpoint_of("10.0.0.2:7005", &template).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.password.as_deref()),
            ("10.0.0.2", 7005, Some("pw"))
        );
        assert!(endpoint_of("nonsense", &template).is_none());
    }
}
