//! Redis Cluster: a real cluster of three masters and three replicas
//! (`redis-cli --cluster create`), two redix nodes given its seeds, and
//! channels whose slots land on every shard.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use common::*;

/// Three masters and three replicas (`redis-server --cluster-enabled
/// yes`), joined by `redis-cli`.
fn start_cluster() -> Vec<RedisServer> {
    start_cluster_of(1)
}

/// Three masters with `replicas` replicas each (masters first).
fn start_cluster_of(replicas: usize) -> Vec<RedisServer> {
    let extra: Vec<String> = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "1000",
        "--cluster-replica-validity-factor",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
        .map(|_| RedisServer::start_with(&[], &extra))
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .output()
        .expect("redis-cli on PATH");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for n in &nodes {
        wait_until("cluster_state:ok on every node", || {
            n.command(&["CLUSTER", "INFO"])
                .is_some_and(|r| r.contains("cluster_state:ok"))
        });
    }
    nodes
}

/// Two channels per master's slot range (`redis-cli` splits the 16,384
/// slots in three), found by asking the cluster for their slots.
fn channels_on_every_shard(node: &RedisServer) -> Vec<String> {
    let mut per_shard: [Vec<String>; 3] = Default::default();
    for i in 0.. {
        let ch = format!("cl-{i}");
        let reply = node
            .command(&["CLUSTER", "KEYSLOT", &format!("rx:{{{ch}}}:s")])
            .expect("KEYSLOT");
        let slot: usize = reply.trim().trim_start_matches(':').parse().expect("slot");
        let shard = (slot * 3 / 16384).min(2);
        if per_shard[shard].len() < 2 {
            per_shard[shard].push(ch);
        }
        if per_shard.iter().all(|s| s.len() == 2) {
            break;
        }
    }
    per_shard.concat()
}

fn cluster_node(seeds: &[RedisServer]) -> Server {
    cluster_node_with(seeds, &[])
}

fn cluster_node_with(seeds: &[RedisServer], args: &[&str]) -> Server {
    let list: Vec<String> = seeds
        .iter()
        .map(|s| format!("\"redis://127.0.0.1:{}\"", s.port))
        .collect();
    let list = format!("redis.cluster=[{}]", list.join(","));
    let mut all = vec!["--set", &list, "--set", "redis.prefix=\"rx:\""];
    all.extend_from_slice(args);
    let node = Server::start(&all);
    wait_until("the cluster node to be ready", || {
        get(node.addr, "/readyz").0 == 200
    });
    node
}

/// (channel, id, data) of the next WebSocket message.
fn next_ws(ws: &mut RawWs) -> (String, String, i64) {
    let f = ws.read_non_ping().expect("a frame");
    let v: serde_json::Value = serde_json::from_str(&f.text()).expect("json");
    assert_eq!(v["type"], "message", "{v}");
    let channel = v["channel"].as_str().expect("channel").to_string();
    let id = v["id"].as_str().expect("id").to_string();
    (channel, id, v["data"].as_i64().expect("data"))
}

fn next_sse(c: &mut SseClient) -> (String, i64) {
    let ev = c.next_message().expect("an event");
    let v: serde_json::Value = serde_json::from_str(&ev.data).expect("json");
    (ev.id.expect("id"), v["data"].as_i64().expect("data"))
}

fn ws_on(addr: SocketAddr, channels: &[String]) -> RawWs {
    let mut ws = RawWs::connect(addr, "/ws", &[]);
    for ch in channels {
        ws_subscribe(&mut ws, ch);
    }
    ws
}

/// Per channel, the (id, data) published, in order.
type Published = HashMap<String, Vec<(String, i64)>>;

fn publish_alternately(
    nodes: [SocketAddr; 2],
    channels: &[String],
    range: std::ops::Range<i64>,
    out: &mut Published,
) {
    for i in range {
        let ch = &channels[i as usize % channels.len()];
        let id = publish_stream_id(nodes[i as usize % 2], ch, &i.to_string());
        out.entry(ch.clone()).or_default().push((id, i));
    }
}

#[test]
fn events_on_every_shard_reach_every_client_once_in_order_and_resume_across_nodes() {
    let cluster = start_cluster();
    let channels = channels_on_every_shard(&cluster[0]);
    let a = cluster_node(&cluster[..2]);
    let b = cluster_node(&cluster[3..]);
    let mut ws = [ws_on(a.addr, &channels), ws_on(b.addr, &channels)];
    let mut sse: Vec<(String, SseClient)> = Vec::new();
    for node in [&a, &b] {
        for ch in &channels {
            let c = SseClient::connect(node.addr, ch);
            assert_eq!(c.status, 200, "{}", c.head);
            sse.push((ch.clone(), c));
        }
    }
    let mut published = Published::new();
    publish_alternately([a.addr, b.addr], &channels, 0..3000, &mut published);
    for (n, w) in ws.iter_mut().enumerate() {
        let mut got: Published = HashMap::new();
        for _ in 0..3000 {
            let (ch, id, data) = next_ws(w);
            got.entry(ch).or_default().push((id, data));
        }
        assert_eq!(got, published, "WebSocket client on node {n}");
    }
    for (ch, c) in &mut sse {
        let got: Vec<(String, i64)> = (0..500).map(|_| next_sse(c)).collect();
        assert_eq!(&got, &published[ch.as_str()], "SSE client of {ch}");
    }
    println!(
        "3000 events over {} channels on 3 shards: every client, once, in order",
        channels.len()
    );

    // A WebSocket client moves from A to B with a `since` per channel;
    // events go on being published meanwhile.
    let mut moved = RawWs::connect(b.addr, "/ws", &[]);
    let mut expect: Published = HashMap::new();
    for ch in &channels {
        let since = &published[ch.as_str()][399].0;
        moved.send_text(&format!(
            r#"{{"type":"subscribe","channel":"{ch}","since":"{since}"}}"#
        ));
        expect.insert(ch.clone(), published[ch.as_str()][400..].to_vec());
    }
    let mut more = Published::new();
    publish_alternately([a.addr, b.addr], &channels, 3000..3060, &mut more);
    for (ch, evs) in &more {
        expect
            .entry(ch.clone())
            .or_default()
            .extend(evs.iter().cloned());
    }
    let total: usize = expect.values().map(Vec::len).sum();
    let mut got: Published = HashMap::new();
    let (mut acks, mut n) = (0, 0);
    while acks < channels.len() || n < total {
        let f = moved.read_non_ping().expect("a frame");
        let v: serde_json::Value = serde_json::from_str(&f.text()).expect("json");
        if v["type"] == "subscribed" {
            acks += 1;
            continue;
        }
        assert_eq!(v["type"], "message", "{v}");
        let ch = v["channel"].as_str().expect("channel").to_string();
        let id = v["id"].as_str().expect("id").to_string();
        got.entry(ch)
            .or_default()
            .push((id, v["data"].as_i64().expect("data")));
        n += 1;
    }
    assert_eq!(got, expect, "the WebSocket client that moved");
    println!("WebSocket client moved A -> B with since per channel: {total} events, none lost");

    // An SSE client of one channel moves from B to A with Last-Event-ID.
    let ch = &channels[5];
    let all: Vec<(String, i64)> = published[ch.as_str()]
        .iter()
        .chain(&more[ch.as_str()])
        .cloned()
        .collect();
    let last = format!("Last-Event-ID: {}", all[449].0);
    let mut c = SseClient::open(a.addr, &format!("/api/stream?channels={ch}"), &[&last]);
    assert_eq!(c.status, 200, "{}", c.head);
    let got: Vec<(String, i64)> = (450..all.len()).map(|_| next_sse(&mut c)).collect();
    assert_eq!(got, all[450..].to_vec(), "the SSE client that moved");
    println!(
        "SSE client of {ch} moved B -> A with Last-Event-ID: {} events, none lost",
        got.len()
    );

    // Jobs are not supported in cluster mode yet: refused, not hung.
    let (status, body, _) = summarize(a.addr, "https://example.com/a", "");
    assert_eq!(status, 503, "{body}");
    drop(cluster);
}

/// `redis-cli -p PORT ARGS…`, its output.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The port of the master that serves `slot`, from `CLUSTER NODES`.
fn owner_of(node: u16, slot: u16) -> u16 {
    let nodes = redis_cli(node, &["CLUSTER", "NODES"]);
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || !f[2].contains("master") {
            continue;
        }
        let serves = f[8..].iter().any(|r| {
            let (lo, hi) = r.split_once('-').unwrap_or((r, r));
            lo.parse::<u16>().is_ok_and(|lo| lo <= slot)
                && hi.parse::<u16>().is_ok_and(|hi| slot <= hi)
        });
        if serves {
            let port = f[1].split(['@', ':']).nth(1).expect("port");
            return port.parse().expect("port");
        }
    }
    panic!("no master serves slot {slot}: {nodes}");
}

/// Moves one slot and its keys from master `from` to master `to`, the way
/// `redis-cli --cluster reshard` does (IMPORTING, MIGRATING, MIGRATE,
/// SETSLOT NODE everywhere).
fn move_slot(masters: &[u16], slot: u16, from: u16, to: u16) {
    let s = slot.to_string();
    let src = redis_cli(from, &["CLUSTER", "MYID"]).trim().to_string();
    let dst = redis_cli(to, &["CLUSTER", "MYID"]).trim().to_string();
    redis_cli(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &src]);
    redis_cli(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &dst]);
    loop {
        let keys = redis_cli(from, &["CLUSTER", "GETKEYSINSLOT", &s, "1000"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            break;
        }
        let port = to.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys);
        let answer = redis_cli(from, &args);
        assert!(answer.contains("OK"), "MIGRATE: {answer}");
    }
    for m in [to, from].iter().chain(masters) {
        redis_cli(*m, &["CLUSTER", "SETSLOT", &s, "NODE", &dst]);
    }
}

fn slot_of(node: &RedisServer, channel: &str) -> u16 {
    let reply = node
        .command(&["CLUSTER", "KEYSLOT", &format!("rx:{{{channel}}}:s")])
        .expect("KEYSLOT");
    reply.trim().trim_start_matches(':').parse().expect("slot")
}

/// Known to fail about half the runs (README "Redis Cluster", not yet):
/// while the slot moves, one channel's announcements come from two masters
/// over two cluster-bus links, so a node can hear a later event before an
/// earlier one and drops the earlier as old. Every publish is answered and
/// lands in the stream; the fix is sharded pub/sub. Run with `--ignored`.
#[test]
#[ignore = "classic pub/sub can reorder one channel's events across a slot move (needs SSUBSCRIBE)"]
fn publishes_follow_a_slot_that_moves_to_another_master_mid_stream() {
    let cluster = start_cluster();
    let channels = channels_on_every_shard(&cluster[0]);
    let a = cluster_node(&cluster[..2]);
    let b = cluster_node(&cluster[3..]);
    let mut ws = [ws_on(a.addr, &channels), ws_on(b.addr, &channels)];
    let moving = &channels[0];
    let slot = slot_of(&cluster[0], moving);
    let from = owner_of(cluster[0].port, slot);
    let masters: Vec<u16> = cluster
        .iter()
        .map(|n| n.port)
        .filter(|p| redis_cli(*p, &["ROLE"]).starts_with("master"))
        .collect();
    let to = *masters
        .iter()
        .find(|p| **p != from)
        .expect("another master");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = {
        let (channels, done, nodes) = (channels.clone(), done.clone(), [a.addr, b.addr]);
        std::thread::spawn(move || {
            let mut published = Published::new();
            for i in 0..1200 {
                publish_alternately(nodes, &channels, i..i + 1, &mut published);
                done.store(i as usize + 1, std::sync::atomic::Ordering::Relaxed);
            }
            published
        })
    };
    wait_until("300 publishes before the move", || {
        done.load(std::sync::atomic::Ordering::Relaxed) >= 300
    });
    move_slot(&masters, slot, from, to);
    let moved_at = done.load(std::sync::atomic::Ordering::Relaxed);
    let published = publisher.join().expect("publisher");
    for m in &masters {
        assert_eq!(owner_of(*m, slot), to, "slot {slot} as master {m} sees it");
    }
    for (n, w) in ws.iter_mut().enumerate() {
        let mut got: Published = HashMap::new();
        for _ in 0..1200 {
            let (ch, id, data) = next_ws(w);
            got.entry(ch).or_default().push((id, data));
        }
        assert_eq!(got, published, "WebSocket client on node {n}");
    }
    println!(
        "slot {slot} of {moving} moved {from} -> {to} after publish {moved_at} of 1200: every client got all, once, in order"
    );
}

/// Publishes `i` on `channel` with publisher id `p<i>` until a node takes
/// it (a shard without a master answers 503 meanwhile); the id.
fn publish_retrying(addr: SocketAddr, channel: &str, i: i64) -> String {
    let body = format!(r#"{{"channel":"{channel}","data":{i},"id":"p{i}"}}"#);
    let mut id = String::new();
    wait_until(&format!("publish {i} to {channel} taken"), || {
        let (status, v) = try_publish(addr, &body);
        if status == 200 {
            id = v["id"].as_str().expect("id").to_string();
        }
        status == 200
    });
    id
}

#[test]
fn a_master_killed_under_publishing_fails_over_and_every_acknowledged_event_arrives_once() {
    // Two replicas per master: the one left after a failover confirms.
    let mut cluster = start_cluster_of(2);
    let channels = channels_on_every_shard(&cluster[0]);
    // Acknowledged only once the slot master's replica has it (`WAIT`).
    let acked = [
        "--set",
        "redis.min_replicas_ack=1",
        "--set",
        "redis.ack_timeout_ms=1000",
    ];
    let a = cluster_node_with(&cluster[..2], &acked);
    let b = cluster_node_with(&cluster[4..], &acked);
    let mut ws = [ws_on(a.addr, &channels), ws_on(b.addr, &channels)];
    // The master of channel 0's slot: also node A's first seed when it is
    // cluster[0] (its pub/sub connection then moves to the next seed).
    let victim = owner_of(cluster[0].port, slot_of(&cluster[0], &channels[0]));
    let mut published = Published::new();
    let mut slowest = std::time::Duration::ZERO;
    for i in 0..600i64 {
        if i == 200 {
            let n = cluster
                .iter()
                .position(|n| n.port == victim)
                .expect("victim");
            cluster[n].kill();
            let other = cluster
                .iter()
                .find(|n| n.port != victim)
                .expect("another")
                .port;
            wait_until("a replica to take over the dead master's slots", || {
                redis_cli(other, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
            });
        }
        let ch = &channels[i as usize % channels.len()];
        let node = [a.addr, b.addr][i as usize % 2];
        let started = std::time::Instant::now();
        let id = publish_retrying(node, ch, i);
        slowest = slowest.max(started.elapsed());
        published.entry(ch.clone()).or_default().push((id, i));
    }
    for (n, w) in ws.iter_mut().enumerate() {
        let mut got: Published = HashMap::new();
        for _ in 0..600 {
            let (ch, id, data) = next_ws(w);
            got.entry(ch).or_default().push((id, data));
        }
        assert_eq!(got, published, "WebSocket client on node {n}");
    }
    println!(
        "master {victim} killed after publish 200 of 600: a replica took over, every client got all, once, in order (slowest publish, retries included: {slowest:?})"
    );
}

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
        have[i] = redix::hub::ids::parse_stream(&ev.id).expect("a stream id");
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
    assert_eq!((next.id, next.data), (marker, -1), "no event twice");
    println!("the SSE client hopped A -> B with one Last-Event-ID: {total} events, once, in order per channel");

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
