//! Sentinel: a real master, two real replicas and three real sentinels on
//! loopback free ports, two redix nodes that find the master through
//! Sentinel. The master is SIGKILLed while both nodes publish with
//! `redis.min_replicas_ack=1`: after Sentinel promotes a replica, every
//! acknowledged publish reaches every client exactly once and in order,
//! `/readyz` went 503 and back to 200, and neither node restarted.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const CHANNEL: &str = "ha";
/// Publishes in all; the master dies after [`KILL_AT`] of them.
const TOTAL: u64 = 150;
const KILL_AT: u64 = 50;
/// The last event: readers stop when they see it.
const END: u64 = 1_000_000;

/// A directory for the sentinels' config files, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "redix-sentinel-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ready(node: &Server) -> u16 {
    get(node.addr, "/readyz").0
}

/// A node that finds the master through `sentinels`.
fn sentinel_node(sentinels: &[RedisServer]) -> Server {
    let list: Vec<String> = sentinels
        .iter()
        .map(|s| format!("\"127.0.0.1:{}\"", s.port))
        .collect();
    let list = format!("redis.sentinels=[{}]", list.join(","));
    let node = Server::start(&[
        "--set",
        &list,
        "--set",
        "redis.master_name=\"mymaster\"",
        "--set",
        "redis.min_replicas_ack=1",
        "--set",
        "redis.ack_timeout_ms=1000",
        "--set",
        "redis.canary_ms=100",
        "--set",
        "redis.ready_within_ms=1000",
        "--set",
        "redis.backoff_max_ms=200",
    ]);
    wait_until("the node to be ready", || ready(&node) == 200);
    node
}

/// Publishes `n` with publish id `ev-n` until it is acknowledged (a 503
/// while the master is down or unconfirmed is retried with the same id);
/// returns the event id.
fn publish_acked(addr: std::net::SocketAddr, n: u64) -> String {
    let body = format!(r#"{{"channel":"{CHANNEL}","data":{{"n":{n}}},"id":"ev-{n}"}}"#);
    let mut id = String::new();
    wait_until(&format!("publish {n} to be acknowledged"), || {
        let (status, v) = try_publish(addr, &body);
        if status == 200 {
            id = v["id"].as_str().expect("id").to_string();
        }
        status == 200
    });
    id
}

/// Reads (id, n) until the END event.
fn read_all(mut c: SseClient) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    loop {
        let ev = c.next_message().expect("an event before END");
        if ev.event.as_deref() != Some("message") {
            // A reset would mean a gap: keep it visible in the check.
            got.push((format!("{:?}", ev.event), 0));
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&ev.data).expect("json");
        let n = v["data"]["n"].as_u64().expect("n");
        if n == END {
            return got;
        }
        got.push((ev.id.expect("id"), n));
    }
}

/// Polls `/readyz` until `stop`; returns each change (status, when).
fn watch_readiness(
    addr: std::net::SocketAddr,
    stop: &AtomicBool,
    start: Instant,
) -> Vec<(u16, Duration)> {
    let mut changes: Vec<(u16, Duration)> = Vec::new();
    loop {
        // One more look after `stop`: the caller saw the node ready.
        let stopping = stop.load(Ordering::Relaxed);
        let status = get(addr, "/readyz").0;
        if changes.last().is_none_or(|(s, _)| *s != status) {
            changes.push((status, start.elapsed()));
        }
        if stopping {
            return changes;
        }
        // The sampling interval of this recorder (nothing waits on it:
        // the test waits on its own conditions and then stops it).
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_master_killed_under_publishing_fails_over_and_every_acknowledged_event_arrives_once() {
    let dir = TempDir::new();
    let mut master = RedisServer::start();
    let _replicas = [
        RedisServer::replica_of(&master),
        RedisServer::replica_of(&master),
    ];
    let sentinels: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::sentinel(&master, "mymaster", &dir.0))
        .collect();
    wait_until(
        "every sentinel to know both replicas and each other",
        || {
            sentinels.iter().all(|s| {
                s.command(&["INFO", "sentinel"])
                    .is_some_and(|i| i.contains("slaves=2,sentinels=3"))
            })
        },
    );
    let nodes = [sentinel_node(&sentinels), sentinel_node(&sentinels)];
    let pids = nodes.each_ref().map(|n| n.pid());
    let readers: Vec<_> = nodes
        .iter()
        .flat_map(|n| [n, n])
        .map(|n| {
            let c = SseClient::connect(n.addr, CHANNEL);
            assert_eq!(c.status, 200, "{}", c.head);
            std::thread::spawn(move || read_all(c))
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let watcher = {
        let (stop, addr) = (stop.clone(), nodes[0].addr);
        std::thread::spawn(move || watch_readiness(addr, &stop, start))
    };
    // One publisher per node, both running when the master dies, so
    // publishes are in flight at that moment.
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let publishers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let (addr, sent) = (node.addr, sent.clone());
            std::thread::spawn(move || {
                (0..TOTAL)
                    .filter(|n| n % 2 == i as u64)
                    .map(|n| {
                        let id = publish_acked(addr, n);
                        sent.fetch_add(1, Ordering::Relaxed);
                        (id, n)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    wait_until("publishing to be under way", || {
        sent.load(Ordering::Relaxed) >= KILL_AT
    });
    master.kill();
    let killed_at = start.elapsed();
    let mut acked: Vec<(String, u64)> = publishers
        .into_iter()
        .flat_map(|p| p.join().expect("publisher"))
        .collect();
    acked.sort_by_key(|(id, _)| stream_id(id));
    let recovered_at = start.elapsed();
    publish_acked(nodes[0].addr, END);
    for node in &nodes {
        wait_until("the node to be ready again", || ready(node) == 200);
    }
    let ready_at = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let changes = watcher.join().expect("watcher");
    println!(
        "master killed at {killed_at:?}; every publish acknowledged by {recovered_at:?}; both nodes ready by {ready_at:?}; /readyz of node 0: {changes:?}"
    );
    let statuses: Vec<u16> = changes.iter().map(|(s, _)| *s).collect();
    assert!(
        statuses.windows(2).any(|w| w == [503, 200]),
        "/readyz went 503 and back to 200: {changes:?}"
    );

    for (i, reader) in readers.into_iter().enumerate() {
        let got = reader.join().expect("reader");
        let ids: Vec<&String> = got.iter().map(|(id, _)| id).collect();
        let mut sorted = ids.clone();
        sorted.sort_by_key(|id| stream_id(id));
        sorted.dedup();
        assert_eq!(
            ids, sorted,
            "client {i}: ids strictly increasing, none twice"
        );
        for pair in &acked {
            let times = got.iter().filter(|g| *g == pair).count();
            assert_eq!(
                times, 1,
                "client {i}: acknowledged {pair:?} delivered {times} times"
            );
        }
        let extra = got.len() - acked.len();
        println!("client {i}: {} events, all {} acknowledged ones once; {extra} unacknowledged ones besides", got.len(), acked.len());
    }
    for (node, pid) in nodes.iter().zip(pids) {
        assert_eq!(node.pid(), pid);
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "node {pid} still runs"
        );
        assert!(node.metric("redix_redis_master_switches_total") >= 1.0);
        assert_eq!(ready(node), 200);
    }
}

/// A planned failover (`SENTINEL FAILOVER`): the old master lives on as a
/// replica, so nothing fails on the wire; the node must follow the switch
/// itself (a connection to the demoted master would answer `READONLY` and
/// its subscriptions would go quiet) and keep its client's stream going.
#[test]
fn a_planned_failover_is_followed_without_a_broken_connection() {
    let dir = TempDir::new();
    let master = RedisServer::start();
    let _replica = RedisServer::replica_of(&master);
    let sentinels: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::sentinel(&master, "mymaster", &dir.0))
        .collect();
    wait_until("every sentinel to know the replica and each other", || {
        sentinels.iter().all(|s| {
            s.command(&["INFO", "sentinel"])
                .is_some_and(|i| i.contains("slaves=1,sentinels=3"))
        })
    });
    let node = sentinel_node(&sentinels);
    let mut client = SseClient::connect(node.addr, CHANNEL);
    let before = publish_acked(node.addr, 1);
    let reply = sentinels[0].command(&["SENTINEL", "FAILOVER", "mymaster"]);
    assert!(
        reply.is_some_and(|r| r.starts_with("+OK")),
        "failover started"
    );
    wait_until("the node to follow the switch", || {
        node.metric("redix_redis_master_switches_total") >= 1.0
    });
    let after = publish_acked(node.addr, 2);
    // Until the acknowledged second event: a try the old master took
    // during the switch (answered 503, since its replica had left) may
    // show up before it, under its own id; the acknowledged ones come
    // once each, in order.
    let mut got: Vec<(String, u64)> = Vec::new();
    while got.last().is_none_or(|(id, _)| *id != after) {
        let ev = client.next_message().expect("an event");
        let v: serde_json::Value = serde_json::from_str(&ev.data).expect("json");
        got.push((ev.id.expect("id"), v["data"]["n"].as_u64().expect("n")));
    }
    assert_eq!(got.first(), Some(&(before, 1)), "{got:?}");
    assert_eq!(got.iter().filter(|(_, n)| *n == 1).count(), 1, "{got:?}");
    println!("events through the planned failover: {got:?}");
    wait_until("the node to be ready", || ready(&node) == 200);
    assert!(master
        .command(&["ROLE"])
        .is_some_and(|r| r.contains("slave")));
}
