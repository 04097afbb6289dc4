//! A real Redis Cluster for tests: three masters (with replicas) joined
//! by `redis-cli --cluster create`, channels whose slots land on every
//! shard, redix nodes given its seeds, and publishing alternately on two
//! nodes.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::http::{get, publish_stream_id};
use super::redis::RedisServer;
use super::server::{wait_until, Server};

/// Three masters and three replicas (`redis-server --cluster-enabled
/// yes`), joined by `redis-cli`.
pub fn start_cluster() -> Vec<RedisServer> {
    start_cluster_of(1)
}

/// Three masters with `replicas` replicas each (masters first).
pub fn start_cluster_of(replicas: usize) -> Vec<RedisServer> {
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
pub fn channels_on_every_shard(node: &RedisServer) -> Vec<String> {
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

pub fn cluster_node(seeds: &[RedisServer]) -> Server {
    cluster_node_with(seeds, &[])
}

pub fn cluster_node_with(seeds: &[RedisServer], args: &[&str]) -> Server {
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

/// Per channel, the (id, data) published, in order.
pub type Published = HashMap<String, Vec<(String, i64)>>;

pub fn publish_alternately(
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
