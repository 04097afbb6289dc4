//! Cluster mode: several redix nodes on one redis-server share one market
//! upstream connection through a lease in Redis; the upstream moves when
//! its holder is killed, and a node that lost the lease cannot publish.

mod common;

use std::time::Instant;

use redix::market::sim::Sim;

use common::*;

const TOKEN: &str = "cluster-token";
/// Short, so a takeover fits a test.
const LEASE_MS: u64 = 1500;

fn simulator() -> Sim {
    simulator_with_token(TOKEN, 20)
}

/// A Redis-mode node fed by `sim` through the cluster's lease.
fn market_node(redis: &RedisServer, sim: &Sim, extra: &[&str]) -> Server {
    let market = market_args(&format!("ws://{}", sim.addr()), TOKEN);
    let lease = format!("market.lease_ms={LEASE_MS}");
    let mut args: Vec<&str> = market.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--set", &lease, "--set", "market.backoff_max_ms=200"]);
    args.extend_from_slice(extra);
    redis_node(redis, &args)
}

fn holds(node: &Server) -> bool {
    node.metric("redix_market_lease_held") == 1.0
}

/// The next trade on an SSE stream: (stream id, symbol).
fn next_sse_trade(c: &mut SseClient) -> (String, String) {
    let ev = c.next_message().expect("a trade");
    let v: serde_json::Value = serde_json::from_str(&ev.data).expect("json");
    let symbol = v["data"][0]["s"].as_str().unwrap_or_default().to_string();
    (ev.id.expect("an id"), symbol)
}

#[test]
fn two_nodes_share_one_upstream_and_it_moves_when_its_holder_is_killed() {
    let redis = RedisServer::start();
    let sim = simulator();
    let mut a = market_node(&redis, &sim, &[]);
    let b = market_node(&redis, &sim, &[]);
    let mut on_a = RawWs::connect(a.addr, "/ws", &[]);
    subscribe_symbol(&mut on_a, "AAPL");
    wait_until("a holder", || holds(&a) || holds(&b));
    let mut on_b = RawWs::connect(b.addr, "/ws", &[]);
    subscribe_symbol(&mut on_b, "AAPL");
    let mut sse_b = SseClient::connect(b.addr, "trades:AAPL");
    assert_eq!(next_trade(&mut on_a).1, "AAPL");
    assert_eq!(next_trade(&mut on_b).1, "AAPL");
    let (mut last_b, _) = next_sse_trade(&mut sse_b);
    let stats = sim.stats();
    assert_eq!(stats.accepted, 1, "{stats:?}");
    assert_eq!(stats.subscribes.get("AAPL"), Some(&1), "{stats:?}");
    // Kill the holder outright; the other node takes over.
    let (holder, other, mut other_ws) = match holds(&a) {
        true => (&mut a, &b, on_b),
        false => panic!("the first subscriber's node (a) takes the lease"),
    };
    let fence = other.metric("redix_market_lease_fence");
    let killed = Instant::now();
    holder.signal(9);
    wait_until("the other node to hold the lease", || holds(other));
    let took = killed.elapsed();
    println!("takeover after SIGKILL: {took:?} (lease {LEASE_MS} ms)");
    assert!(other.metric("redix_market_lease_fence") > fence);
    wait_until("a second upstream connection", || sim.stats().accepted == 2);
    // Its clients keep receiving trades, newer than before.
    let (id, symbol) = next_trade(&mut other_ws);
    assert_eq!(symbol, "AAPL");
    wait_until("an SSE trade after the takeover", || {
        let (id, _) = next_sse_trade(&mut sse_b);
        let newer = stream_id(&id) > stream_id(&last_b);
        last_b = id;
        newer
    });
    assert!(!id.is_empty());
    let stats = sim.stats();
    assert_eq!(stats.peak_connections, 1, "never two at once: {stats:?}");
    assert_eq!(stats.same_token_drops, 0, "{stats:?}");
    assert_eq!(stats.subscribes.get("AAPL"), Some(&2), "{stats:?}");
}

#[test]
fn the_holder_subscribes_what_other_nodes_want_and_lets_it_go() {
    let redis = RedisServer::start();
    let sim = simulator();
    let a = market_node(&redis, &sim, &["--set", "market.linger_ms=100"]);
    let b = market_node(&redis, &sim, &[]);
    let mut on_a = RawWs::connect(a.addr, "/ws", &[]);
    subscribe_symbol(&mut on_a, "AAPL");
    wait_until("a holds the lease", || holds(&a));
    // A symbol only b's client wants is subscribed by a's upstream.
    let mut on_b = RawWs::connect(b.addr, "/ws", &[]);
    subscribe_symbol(&mut on_b, "MSFT");
    assert_eq!(next_trade(&mut on_b).1, "MSFT");
    assert!(!holds(&b));
    assert_eq!(b.metric("redix_market_up"), 0.0);
    drop(on_b);
    wait_until("MSFT unsubscribed upstream", || {
        sim.stats().unsubscribes.get("MSFT") == Some(&1)
    });
    let stats = sim.stats();
    assert_eq!(stats.unsubscribes.get("AAPL"), None, "{stats:?}");
    assert_eq!(stats.accepted, 1, "{stats:?}");
}

#[test]
fn a_holder_whose_lease_was_taken_stops_publishing_and_closes_its_upstream() {
    let redis = RedisServer::start();
    let sim = simulator();
    let a = market_node(&redis, &sim, &[]);
    let mut ws = RawWs::connect(a.addr, "/ws", &[]);
    subscribe_symbol(&mut ws, "AAPL");
    wait_until("a holds the lease", || holds(&a));
    next_trade(&mut ws);
    let fence = a.metric("redix_market_lease_fence");
    // Another holder (with the next token) as a partition would leave it.
    let next = redis
        .command(&["INCR", "redix:market:fence"])
        .expect("INCR");
    let thief_fence: u64 = next
        .trim()
        .trim_start_matches(':')
        .parse()
        .expect("a number");
    assert!(thief_fence as f64 > fence);
    let thief = format!("elsewhere {thief_fence}");
    redis
        .command(&["SET", "redix:market:lease", &thief, "PX", "3000"])
        .expect("SET");
    let stolen_ms = redis_time_ms(&redis);
    let since = Instant::now();
    wait_until("a gives the upstream up", || {
        !holds(&a) && sim.stats().connections == 0
    });
    println!(
        "upstream closed {:?} after the lease was taken",
        since.elapsed()
    );
    // Nothing it read after that was published: the stream's newest entry
    // is no newer than the theft.
    let newest = redis
        .command(&["XREVRANGE", "redix:s:trades:AAPL", "+", "-", "COUNT", "1"])
        .unwrap_or_default();
    let newest_ms = newest
        .lines()
        .find_map(stream_id_ms)
        .expect("trades were published before");
    assert!(newest_ms <= stolen_ms, "{newest_ms} > {stolen_ms}");
    // When the foreign lease expires, a takes it again with a newer token.
    wait_until("a holds it again", || holds(&a));
    assert!(a.metric("redix_market_lease_fence") > thief_fence as f64);
    assert!(a.metric("redix_market_leases_taken_total") >= 2.0);
}

/// Redis's clock (`TIME`) in ms.
fn redis_time_ms(redis: &RedisServer) -> u64 {
    let reply = redis.command(&["TIME"]).expect("TIME");
    let numbers: Vec<u64> = reply.lines().filter_map(|l| l.parse().ok()).collect();
    match numbers.as_slice() {
        [secs, micros] => secs * 1000 + micros / 1000,
        _ => panic!("TIME reply {reply:?}"),
    }
}

/// The ms part of a line that is a stream id `ms-n`.
fn stream_id_ms(line: &str) -> Option<u64> {
    let (ms, n) = line.split_once('-')?;
    n.parse::<u64>().ok()?;
    ms.parse().ok()
}

/// Without `market.url`, a Redis-mode cluster is fed by the built-in
/// simulator of whichever node holds the lease: the demo works unchanged.
#[test]
fn without_an_upstream_the_lease_holder_runs_the_built_in_simulator() {
    let redis = RedisServer::start();
    let lease = format!("market.lease_ms={LEASE_MS}");
    let a = redis_node(&redis, &["--set", &lease]);
    let b = redis_node(&redis, &["--set", &lease]);
    let mut on_a = SseClient::connect(a.addr, "trades:AAPL");
    let mut on_b = SseClient::connect(b.addr, "trades:AAPL");
    assert_eq!(next_sse_trade(&mut on_a).1, "AAPL");
    assert_eq!(next_sse_trade(&mut on_b).1, "AAPL");
    let held = [&a, &b].iter().filter(|n| holds(n)).count();
    assert_eq!(held, 1, "one holder");
    let simulated = a.metric("redix_market_simulated") + b.metric("redix_market_simulated");
    assert_eq!(simulated, 1.0, "one simulator runs");
}
