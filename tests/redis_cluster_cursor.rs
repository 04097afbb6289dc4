//! Redis Cluster, one SSE stream over several channels: its events carry
//! a composite cursor (every channel's position) in `id:`, and one
//! `Last-Event-ID` resumes each channel exactly, on any node. A real
//! cluster of three masters and three replicas, two redix nodes.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::*;

/// One event of a composite-cursor stream: (channel, its stream id, data,
/// the positions its `id:` holds, the `id:` itself).
struct Composed {
    channel: String,
    id: String,
    data: i64,
    positions: Vec<u64>,
    cursor: String,
}

fn next_composed(c: &mut SseClient, channels: &[Arc<str>]) -> Composed {
    let ev = c.next_message().expect("an event");
    let v: serde_json::Value = serde_json::from_str(&ev.data).expect("json");
    let cursor = ev.id.expect("id:");
    let positions = redix::hub::cursor::parse(&cursor, channels)
        .unwrap_or_else(|e| panic!("id: {cursor:?} {e}"))
        .to_vec();
    Composed {
        channel: v["channel"].as_str().expect("channel").to_string(),
        id: v["id"].as_str().expect("id").to_string(),
        data: v["data"].as_i64().expect("data"),
        positions,
        cursor,
    }
}

/// Reads `n` events of a composite stream, checking that each `id:`
/// holds, for every channel, the last event of it the client has (or
/// `start` before any); returns what it read per channel and the last `id:`.
fn read_composed(
    c: &mut SseClient,
    channels: &[Arc<str>],
    start: &[u64],
    n: usize,
) -> (Published, String) {
    let mut have = start.to_vec();
    let (mut got, mut last) = (Published::new(), String::new());
    for _ in 0..n {
        let ev = next_composed(c, channels);
        let i = channels
            .iter()
            .position(|ch| **ch == *ev.channel)
            .expect("a channel of the stream");
        have[i] = stream_position(&ev.id);
        assert_eq!(
            ev.positions, have,
            "the id: of event {} of {}",
            ev.id, ev.channel
        );
        got.entry(ev.channel).or_default().push((ev.id, ev.data));
        last = ev.cursor;
    }
    (got, last)
}

/// The packed position of a stream id.
fn stream_position(id: &str) -> u64 {
    redix::hub::ids::parse_stream(id).expect("a stream id")
}

/// `published` from the `k`th event of each channel on.
fn from_each(published: &Published, k: &HashMap<String, usize>) -> Published {
    published
        .iter()
        .map(|(ch, evs)| (ch.clone(), evs[k.get(ch).copied().unwrap_or(0)..].to_vec()))
        .filter(|(_, evs)| !evs.is_empty())
        .collect()
}

/// Two nodes on one cluster, and the stream every step opens: channels
/// on every shard, in the order the client names them and in the
/// stream's canonical (sorted) order.
struct Setup {
    nodes: [Server; 2],
    names: Vec<String>,
    canonical: Vec<Arc<str>>,
    path: String,
}

impl Setup {
    fn new(cluster: &[RedisServer]) -> Setup {
        let names = channels_on_every_shard(&cluster[0]);
        let mut canonical: Vec<Arc<str>> = names.iter().map(|n| Arc::from(n.as_str())).collect();
        canonical.sort();
        Setup {
            nodes: [cluster_node(&cluster[..2]), cluster_node(&cluster[3..])],
            path: format!("/api/stream?channels={}", names.join(",")),
            names,
            canonical,
        }
    }

    fn addrs(&self) -> [std::net::SocketAddr; 2] {
        [self.nodes[0].addr, self.nodes[1].addr]
    }

    /// The stream on node `n`, resuming from `cursor`.
    fn open(&self, n: usize, cursor: Option<&str>) -> SseClient {
        let header = cursor.map(|c| format!("Last-Event-ID: {c}"));
        let headers: Vec<&str> = header.iter().map(String::as_str).collect();
        let c = SseClient::open(self.nodes[n].addr, &self.path, &headers);
        assert_eq!(c.status, 200, "{}", c.head);
        c
    }
}

#[test]
fn one_sse_stream_over_every_shard_resumes_on_another_node_from_its_composite_id() {
    let cluster = start_cluster();
    let s = Setup::new(&cluster);
    let mut published = Published::new();
    let (read, cursor) = read_half(&s, &mut published);
    hop(&s, &mut published, &read, &cursor);
    reset_one_channel(&s, &published);
    refuse_bad_cursors(&s, &published, &cursor);
    drop(cluster);
}

/// 600 events published alternately on both nodes reach the stream on
/// node A once and in order per channel; it reads 300 and leaves the
/// rest delivered (or queued) but unread. How many it read per channel,
/// and its last `id:`.
fn read_half(s: &Setup, published: &mut Published) -> (HashMap<String, usize>, String) {
    let mut c = s.open(0, None);
    publish_alternately(s.addrs(), &s.names, 0..600, published);
    let start = vec![0; s.names.len()];
    let (got, cursor) = read_composed(&mut c, &s.canonical, &start, 300);
    let read: HashMap<String, usize> = got.iter().map(|(ch, e)| (ch.clone(), e.len())).collect();
    let first: Published = published
        .iter()
        .map(|(ch, evs)| {
            (
                ch.clone(),
                evs[..read.get(ch).copied().unwrap_or(0)].to_vec(),
            )
        })
        .filter(|(_, evs)| !evs.is_empty())
        .collect();
    assert_eq!(
        got, first,
        "the first 300 events, once, in order per channel"
    );
    println!(
        "one SSE stream over {} channels on 3 shards: {cursor:?} after 300 events",
        s.names.len()
    );
    (read, cursor)
}

/// The client hops to node B with its last id while 300 more events are
/// published: it gets exactly what it had not read, once, in order per
/// channel, and nothing more.
fn hop(s: &Setup, published: &mut Published, read: &HashMap<String, usize>, cursor: &str) {
    let publisher = {
        let (names, nodes) = (s.names.clone(), s.addrs());
        std::thread::spawn(move || {
            let mut more = Published::new();
            publish_alternately(nodes, &names, 600..900, &mut more);
            more
        })
    };
    let mut c = s.open(1, Some(cursor));
    for (ch, evs) in publisher.join().expect("publisher") {
        published.entry(ch).or_default().extend(evs);
    }
    let expect = from_each(published, read);
    let total: usize = expect.values().map(Vec::len).sum();
    let start = redix::hub::cursor::parse(cursor, &s.canonical).expect("cursor");
    let (got, _) = read_composed(&mut c, &s.canonical, &start, total);
    assert_eq!(got, expect, "the SSE client that hopped nodes");
    // Nothing more than that: the next event is the next one published.
    let marker = publish_stream_id(s.nodes[0].addr, &s.names[0], "-1");
    let next = next_composed(&mut c, &s.canonical);
    assert_eq!((next.id, next.data), (marker.clone(), -1), "no event twice");
    let first = published.entry(s.names[0].clone()).or_default();
    first.push((marker, -1));
    println!("the SSE client hopped A -> B with one Last-Event-ID: {total} events, once, in order per channel");
}

/// One channel's position older than its history: a reset for that
/// channel alone, then what its history holds; the others go on exactly.
fn reset_one_channel(s: &Setup, published: &Published) {
    let x = &s.names[0];
    let mut positions: Vec<u64> = s
        .canonical
        .iter()
        .map(|ch| stream_position(&published[&**ch].last().expect("events").0))
        .collect();
    let xi = s.canonical.iter().position(|ch| **ch == **x).expect("x");
    positions[xi] = redix::hub::ids::pack(1, 0).expect("an old id");
    let tag = redix::hub::cursor::tag(&s.canonical);
    let old = redix::hub::cursor::text(tag, &positions);
    let mut c = s.open(0, Some(&old));
    let reset = c.next_message().expect("an event");
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
    assert!(reset.id.is_none(), "a reset moves no position");
    let v: serde_json::Value = serde_json::from_str(&reset.data).expect("json");
    assert_eq!(v["channel"], x.as_str(), "{v}");
    let other = &s.names[1];
    let marker = publish_stream_id(s.nodes[1].addr, other, "-2");
    let mut replayed = Vec::new();
    loop {
        let ev = next_composed(&mut c, &s.canonical);
        if ev.channel == *other {
            assert_eq!((ev.id, ev.data), (marker, -2), "nothing else of {other}");
            break;
        }
        assert_eq!(&ev.channel, x, "only the reset channel replays");
        replayed.push((ev.id, ev.data));
    }
    let all = &published[x];
    assert!(!replayed.is_empty() && replayed.len() < all.len());
    assert_eq!(
        replayed,
        all[all.len() - replayed.len()..],
        "the tail of {x}"
    );
    println!(
        "a position older than the history: reset for {x} alone, then its last {} events",
        replayed.len()
    );
}

/// Cursors this stream cannot resume from: 400 `bad_cursor`, saying why.
fn refuse_bad_cursors(s: &Setup, published: &Published, cursor: &str) {
    let cursor_of = |names: &[&str]| {
        let mut set: Vec<Arc<str>> = names.iter().map(|n| Arc::from(*n)).collect();
        set.sort();
        redix::hub::cursor::text(redix::hub::cursor::tag(&set), &vec![0; set.len()])
    };
    let other = cursor_of(&[&s.names[0], &s.names[1]]);
    let mut swapped: Vec<&str> = s.names.iter().map(String::as_str).collect();
    swapped[0] = "cl-other";
    let swapped = cursor_of(&swapped);
    let plain = published[&s.names[0]][0].0.clone();
    let cases = [
        (other, "holds 2 positions; this stream has 6 channels"),
        (swapped, "another set of channels"),
        (plain, "is not a composite cursor"),
        (format!("{cursor}!"), "character '!'"),
        (format!("{cursor}{}", "0".repeat(200)), "too long"),
        (cursor.replacen('.', ".0", 2), "malformed position"),
    ];
    for (bad, why) in cases {
        let header = format!("Last-Event-ID: {bad}");
        let (status, body) = request(s.nodes[0].addr, "GET", &s.path, &[&header], "");
        assert_eq!(status, 400, "{bad}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["error"]["code"], "bad_cursor", "{body}");
        let message = v["error"]["message"].as_str().expect("message");
        assert!(message.contains(why), "{bad}: {message}");
    }
    println!("bad cursors: 400 bad_cursor, naming the problem");
}
