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

#[test]
fn one_sse_stream_over_every_shard_resumes_on_another_node_from_its_composite_id() {
    let cluster = start_cluster();
    let names = channels_on_every_shard(&cluster[0]);
    let a = cluster_node(&cluster[..2]);
    let b = cluster_node(&cluster[3..]);
    let mut canonical: Vec<Arc<str>> = names.iter().map(|n| Arc::from(n.as_str())).collect();
    canonical.sort();
    let mut c = SseClient::connect(a.addr, &names.join(","));
    assert_eq!(c.status, 200, "{}", c.head);
    let mut published = Published::new();
    publish_alternately([a.addr, b.addr], &names, 0..600, &mut published);
    // Read half: the rest is delivered (or queued) but never read.
    let (got, cursor) = read_composed(&mut c, &canonical, &vec![0; names.len()], 300);
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
        names.len()
    );
    drop(c);

    // Hop to the other node with the last id while publishing goes on.
    let publisher = {
        let names = names.clone();
        let nodes = [a.addr, b.addr];
        std::thread::spawn(move || {
            let mut more = Published::new();
            publish_alternately(nodes, &names, 600..900, &mut more);
            more
        })
    };
    let header = format!("Last-Event-ID: {cursor}");
    let path = format!("/api/stream?channels={}", names.join(","));
    let mut c = SseClient::open(b.addr, &path, &[&header]);
    assert_eq!(c.status, 200, "{}", c.head);
    for (ch, evs) in publisher.join().expect("publisher") {
        published.entry(ch).or_default().extend(evs);
    }
    let expect = from_each(&published, &read);
    let total: usize = expect.values().map(Vec::len).sum();
    let start = redix::hub::cursor::parse(&cursor, &canonical).expect("cursor");
    let (got, _) = read_composed(&mut c, &canonical, &start, total);
    assert_eq!(got, expect, "the SSE client that hopped nodes");
    // Nothing more than that: the next event is the next one published.
    let marker = publish_stream_id(a.addr, &names[0], "-1");
    let next = next_composed(&mut c, &canonical);
    assert_eq!((next.id, next.data), (marker.clone(), -1), "no event twice");
    println!("the SSE client hopped A -> B with one Last-Event-ID: {total} events, once, in order per channel");
    published
        .entry(names[0].clone())
        .or_default()
        .push((marker, -1));

    // One channel's position older than its history: a reset for that
    // channel alone, then what its history holds; the others go on exactly.
    let x = &names[0];
    let mut positions: Vec<u64> = canonical
        .iter()
        .map(|ch| stream_position(&published[&**ch].last().expect("events").0))
        .collect();
    let xi = canonical.iter().position(|ch| **ch == **x).expect("x");
    positions[xi] = redix::hub::ids::pack(1, 0).expect("an old id");
    let tag = redix::hub::cursor::tag(&canonical);
    let old = redix::hub::cursor::text(tag, &positions);
    let mut c = SseClient::open(a.addr, &path, &[&format!("Last-Event-ID: {old}")]);
    assert_eq!(c.status, 200, "{}", c.head);
    let reset = c.next_message().expect("an event");
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
    assert!(reset.id.is_none(), "a reset moves no position");
    let v: serde_json::Value = serde_json::from_str(&reset.data).expect("json");
    assert_eq!(v["channel"], x.as_str(), "{v}");
    let marker = publish_stream_id(b.addr, &names[1], "-2");
    let mut replayed = Vec::new();
    loop {
        let ev = next_composed(&mut c, &canonical);
        if ev.channel == names[1] {
            assert_eq!(
                (ev.id, ev.data),
                (marker, -2),
                "nothing else of {}",
                names[1]
            );
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

    // Cursors this stream cannot resume from: 400, saying why.
    let cursor_of = |names: &[&str]| {
        let mut set: Vec<Arc<str>> = names.iter().map(|n| Arc::from(*n)).collect();
        set.sort();
        redix::hub::cursor::text(redix::hub::cursor::tag(&set), &vec![0; set.len()])
    };
    let other = cursor_of(&[&names[0], &names[1]]);
    let mut swapped: Vec<&str> = names.iter().map(String::as_str).collect();
    swapped[0] = "cl-other";
    let swapped = cursor_of(&swapped);
    let cases = [
        (other, "holds 2 positions; this stream has 6 channels"),
        (swapped, "another set of channels"),
        (
            published[&names[0]][0].0.clone(),
            "is not a composite cursor",
        ),
        (format!("{cursor}!"), "character '!'"),
        (format!("{cursor}{}", "0".repeat(200)), "too long"),
        (cursor.replacen(".", ".0", 2), "malformed position"),
    ];
    for (bad, why) in cases {
        let (status, body) = request(
            a.addr,
            "GET",
            &path,
            &[&format!("Last-Event-ID: {bad}")],
            "",
        );
        assert_eq!(status, 400, "{bad}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["error"]["code"], "bad_cursor", "{body}");
        let message = v["error"]["message"].as_str().expect("message");
        assert!(message.contains(why), "{bad}: {message}");
    }
    println!("bad cursors: 400 bad_cursor, naming the problem");
    drop(cluster);
}
