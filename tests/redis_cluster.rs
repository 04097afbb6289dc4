//! Redis Cluster: a real cluster of three masters and three replicas
//! (`redis-cli --cluster create`), two redix nodes given its seeds, and
//! channels whose slots land on every shard.

mod common;
#[path = "redis_cluster/pipeline.rs"]
mod pipeline;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::*;

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

/// The per-shard series `name` of a node's metrics: master address to
/// value.
fn shard_rows(node: SocketAddr, name: &str) -> HashMap<String, f64> {
    let (status, text) = get(node, "/metrics/prom");
    assert_eq!(status, 200);
    let prefix = format!("{name}{{shard=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.split_once("\"} "))
        .map(|(shard, v)| (shard.to_string(), v.parse().expect("a number")))
        .collect()
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
    // Per shard: its link up, its two channels, and the 500 publishes
    // this node ran there (each node published 1,500, alternating
    // channels, so 500 on each shard).
    for node in [a.addr, b.addr] {
        let up = shard_rows(node, "redix_redis_shard_up");
        let subscribed = shard_rows(node, "redix_redis_shard_channels");
        let timed = shard_rows(node, "redix_redis_shard_publish_seconds_count");
        assert_eq!(up.len(), 3, "{up:?}");
        for shard in up.keys() {
            assert_eq!(up[shard], 1.0, "{shard} on {node}");
            assert_eq!(subscribed[shard], 2.0, "{shard} on {node}: {subscribed:?}");
            assert_eq!(timed[shard], 500.0, "{shard} on {node}: {timed:?}");
        }
    }

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

    // Jobs run in cluster mode (tests/jobs_redis_cluster.rs): with no
    // worker, a summary is accepted and queued.
    let (status, body, _) = summarize(a.addr, "https://example.com/a", "?wait=0");
    assert_eq!(status, 202, "{body}");
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

/// While the slot moves, the old master pushes `sunsubscribe` for the
/// channel; each node reads the slot map again, SSUBSCRIBEs on the new
/// master and reloads the channel from the last id it delivered, so its
/// clients get every event once and in order across the move.
#[test]
fn publishes_follow_a_slot_that_moves_to_another_master_mid_stream() {
    let cluster = start_cluster();
    let channels = channels_on_every_shard(&cluster[0]);
    let a = cluster_node(&cluster[..2]);
    let b = cluster_node(&cluster[3..]);
    let mut ws = [ws_on(a.addr, &channels), ws_on(b.addr, &channels)];
    let moving = &channels[0];
    let slot = slot_of(&cluster[0], moving);
    let from = owner_of(cluster[0].port, slot);
    let masters = masters_of(&cluster);
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
    // Both nodes followed the move away from `from`, and carry the
    // channel on `to` now.
    for node in [a.addr, b.addr] {
        let (from, to) = (format!("127.0.0.1:{from}"), format!("127.0.0.1:{to}"));
        let redirects = shard_rows(node, "redix_redis_shard_redirects_total");
        assert!(redirects[&from] >= 1.0, "{node}: {redirects:?}");
        let subscribed = shard_rows(node, "redix_redis_shard_channels");
        assert_eq!((subscribed[&from], subscribed[&to]), (1.0, 3.0), "{node}");
    }
    println!(
        "slot {slot} of {moving} moved {from} -> {to} after publish {moved_at} of 1200: every client got all, once, in order"
    );
}

/// The masters of a cluster, by port.
fn masters_of(cluster: &[RedisServer]) -> Vec<u16> {
    cluster
        .iter()
        .map(|n| n.port)
        .filter(|p| redis_cli(*p, &["ROLE"]).starts_with("master"))
        .collect()
}

/// A channel whose slot moved before anyone here subscribed to it: the
/// node's slot map still names the old master, which answers the
/// SSUBSCRIBE with `MOVED`; the node subscribes on the master named, and
/// the client gets what is published there.
#[test]
fn a_subscribe_answered_moved_follows_it_to_the_new_master() {
    let cluster = start_cluster();
    let channels = channels_on_every_shard(&cluster[0]);
    let a = cluster_node(&cluster[..2]);
    let ch = &channels[0];
    let slot = slot_of(&cluster[0], ch);
    let from = owner_of(cluster[0].port, slot);
    let masters = masters_of(&cluster);
    let to = *masters.iter().find(|p| **p != from).expect("another");
    move_slot(&masters, slot, from, to);
    let mut ws = ws_on(a.addr, std::slice::from_ref(ch));
    let ids: Vec<String> = (0..5)
        .map(|i| publish_stream_id(a.addr, ch, &i.to_string()))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(next_ws(&mut ws), (ch.clone(), id.clone(), i as i64));
    }
    let (from, to) = (format!("127.0.0.1:{from}"), format!("127.0.0.1:{to}"));
    let redirects = shard_rows(a.addr, "redix_redis_shard_redirects_total");
    assert_eq!(redirects[&from], 1.0, "{redirects:?}");
    let subscribed = shard_rows(a.addr, "redix_redis_shard_channels");
    assert_eq!((subscribed[&from], subscribed[&to]), (0.0, 1.0));
}

/// One shard's link cut by Redis (`CLIENT KILL TYPE pubsub` on its
/// master) while events are published on every shard: the node connects
/// again, SSUBSCRIBEs that shard's channels and reloads them, so its
/// client gets every event once and in order, with no failover involved.
#[test]
fn a_shard_link_cut_by_redis_reconnects_and_reloads_what_it_missed() {
    let cluster = start_cluster();
    let channels = channels_on_every_shard(&cluster[0]);
    let a = cluster_node(&cluster[..2]);
    let mut ws = ws_on(a.addr, &channels);
    let master = owner_of(cluster[0].port, slot_of(&cluster[0], &channels[0]));
    let shard = format!("127.0.0.1:{master}");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = {
        let (channels, done, node) = (channels.clone(), done.clone(), a.addr);
        std::thread::spawn(move || {
            let mut published = Published::new();
            for i in 0..600 {
                publish_alternately([node, node], &channels, i..i + 1, &mut published);
                done.store(i as usize + 1, std::sync::atomic::Ordering::Relaxed);
            }
            published
        })
    };
    wait_until("200 publishes before the cut", || {
        done.load(std::sync::atomic::Ordering::Relaxed) >= 200
    });
    let loads = metric(a.addr, "redix_redis_loads_total");
    let killed = redis_cli(master, &["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(
        killed.trim().parse::<u32>().is_ok_and(|n| n >= 1),
        "{killed}"
    );
    wait_until("the node to count the lost link", || {
        shard_rows(a.addr, "redix_redis_shard_reconnects_total")[&shard] >= 1.0
    });
    let published = publisher.join().expect("publisher");
    let mut got: Published = HashMap::new();
    for _ in 0..600 {
        let (ch, id, data) = next_ws(&mut ws);
        got.entry(ch).or_default().push((id, data));
    }
    assert_eq!(got, published);
    wait_until("the shard link up again", || {
        shard_rows(a.addr, "redix_redis_shard_up")[&shard] == 1.0
    });
    assert_eq!(
        shard_rows(a.addr, "redix_redis_shard_channels")[&shard],
        2.0
    );
    // The shard's two channels were loaded again (from their last ids).
    assert!(metric(a.addr, "redix_redis_loads_total") >= loads + 2.0);
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
    // The master of channel 0's slot (node A's first seed when it is
    // cluster[0]: A then reads the slot map from the other nodes).
    let slot = slot_of(&cluster[0], &channels[0]);
    let victim = owner_of(cluster[0].port, slot);
    // Publishes go on, retrying their 503s, while the master dies.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = {
        let (channels, done, nodes) = (channels.clone(), done.clone(), [a.addr, b.addr]);
        std::thread::spawn(move || {
            let mut published = Published::new();
            let mut slowest = std::time::Duration::ZERO;
            for i in 0..600i64 {
                let ch = &channels[i as usize % channels.len()];
                let started = std::time::Instant::now();
                let id = publish_retrying(nodes[i as usize % 2], ch, i);
                slowest = slowest.max(started.elapsed());
                published.entry(ch.clone()).or_default().push((id, i));
                done.store(i as usize + 1, std::sync::atomic::Ordering::Relaxed);
            }
            (published, slowest)
        })
    };
    wait_until("200 publishes before the kill", || {
        done.load(std::sync::atomic::Ordering::Relaxed) >= 200
    });
    let n = cluster
        .iter()
        .position(|n| n.port == victim)
        .expect("victim");
    cluster[n].kill();
    let killed_at = done.load(std::sync::atomic::Ordering::Relaxed);
    // Not ready while a master of the slot map has no link (as in
    // single-server mode while Redis is gone)…
    for node in [a.addr, b.addr] {
        wait_until("not ready while a master is down", || {
            get(node, "/readyz").0 == 503
        });
    }
    let other = cluster
        .iter()
        .find(|n| n.port != victim)
        .expect("another")
        .port;
    wait_until("a replica to take over the dead master's slots", || {
        redis_cli(other, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
    });
    // …and ready again once a replica took over, with no restart.
    for node in [a.addr, b.addr] {
        wait_until("ready again after the failover", || {
            get(node, "/readyz").0 == 200
        });
    }
    let (published, slowest) = publisher.join().expect("publisher");
    for (n, w) in ws.iter_mut().enumerate() {
        let mut got: Published = HashMap::new();
        for _ in 0..600 {
            let (ch, id, data) = next_ws(w);
            got.entry(ch).or_default().push((id, data));
        }
        assert_eq!(got, published, "WebSocket client on node {n}");
    }
    // The promoted replica took over the dead master's row: up, with its
    // channels, the reconnects of the failover, and every publish this
    // node ran on the shard (100 per shard, retries on top).
    let heir = format!("127.0.0.1:{}", owner_of(other, slot));
    for node in [a.addr, b.addr] {
        let up = shard_rows(node, "redix_redis_shard_up");
        let subscribed = shard_rows(node, "redix_redis_shard_channels");
        let reconnects = shard_rows(node, "redix_redis_shard_reconnects_total");
        let timed = shard_rows(node, "redix_redis_shard_publish_seconds_count");
        assert!(!up.contains_key(&format!("127.0.0.1:{victim}")), "{up:?}");
        assert_eq!(up.values().sum::<f64>(), 3.0, "{up:?}");
        assert_eq!(subscribed.values().sum::<f64>(), 6.0, "{subscribed:?}");
        assert!(reconnects[&heir] >= 1.0, "{heir}: {reconnects:?}");
        assert!(timed.values().all(|n| *n >= 100.0), "{timed:?}");
    }
    println!(
        "master {victim} killed after publish {killed_at} of 600: both nodes not ready, then ready again; a replica took over, every client got all, once, in order (slowest publish, retries included: {slowest:?})"
    );
}
