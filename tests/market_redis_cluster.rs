//! The market feed with Redis Cluster: a real cluster of 3 masters, two
//! redix nodes, the Finnhub simulator as the upstream. One upstream
//! connection for the cluster (the lease in the `{market}` slot); trades
//! published on each channel's own shard, fenced there by the channel's
//! highest token; the upstream moves when its holder is killed.

mod common;

use std::collections::HashMap;
use std::time::Instant;

use redix::market::sim::Sim;

use common::*;

const TOKEN: &str = "cluster-token";
/// Short, so a takeover fits a test.
const LEASE_MS: u64 = 1500;

/// A node on `cluster`, fed by `sim` (or, without, the built-in simulator).
fn market_node(cluster: &[RedisServer], sim: Option<&Sim>) -> Server {
    let mut args: Vec<String> = vec![
        "--set".into(),
        format!("market.lease_ms={LEASE_MS}"),
        "--set".into(),
        "market.backoff_max_ms=200".into(),
    ];
    if let Some(sim) = sim {
        args.extend(market_args(&format!("ws://{}", sim.addr()), TOKEN));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster_node_with(cluster, &args)
}

fn holds(node: &Server) -> bool {
    node.metric("redix_market_lease_held") == 1.0
}

/// The master that owns `key` (the others answer `MOVED`).
fn owner<'a>(masters: &'a [RedisServer], key: &str) -> &'a RedisServer {
    masters
        .iter()
        .find(|m| {
            m.command(&["EXISTS", key])
                .is_some_and(|r| !r.starts_with("-MOVED"))
        })
        .expect("a master owns the key")
}

/// `GET key` on its owner, as text (`None` when absent).
fn get_key(masters: &[RedisServer], key: &str) -> Option<String> {
    let reply = owner(masters, key).command(&["GET", key])?;
    let mut lines = reply.lines();
    match lines.next() {
        Some(l) if l.starts_with('$') && l != "$-1" => lines.next().map(str::to_string),
        _ => None,
    }
}

fn integer(reply: Option<String>) -> u64 {
    let reply = reply.expect("a reply");
    reply
        .trim()
        .trim_start_matches(':')
        .parse()
        .expect("an integer")
}

/// Three symbols whose `trades:` channels are on three different masters.
fn symbols_on_every_shard(masters: &[RedisServer]) -> Vec<String> {
    let mut by_master: HashMap<u16, String> = HashMap::new();
    for i in 0.. {
        let symbol = format!("SYM{i}");
        let port = owner(masters, &format!("rx:{{trades:{symbol}}}:s")).port;
        by_master.entry(port).or_insert(symbol);
        if by_master.len() == 3 {
            break;
        }
    }
    let mut symbols: Vec<String> = by_master.into_values().collect();
    symbols.sort();
    symbols
}

/// Reads trades until every symbol of `last` has one newer than the id
/// recorded there (an empty id: any), recording each.
fn trades_after(ws: &mut RawWs, last: &mut HashMap<String, String>) {
    let mut due: Vec<String> = last.keys().cloned().collect();
    while !due.is_empty() {
        let (id, symbol) = next_trade(ws);
        let Some(seen) = last.get_mut(&symbol) else {
            continue;
        };
        if seen.is_empty() || stream_id(&id) > stream_id(seen) {
            *seen = id;
            due.retain(|s| *s != symbol);
        }
    }
}

/// A WebSocket on `node` subscribed to every symbol, and its last ids.
fn client(node: &Server, symbols: &[String]) -> (RawWs, HashMap<String, String>) {
    let mut ws = RawWs::connect(node.addr, "/ws", &[]);
    for s in symbols {
        subscribe_symbol(&mut ws, s);
    }
    let last = symbols.iter().map(|s| (s.clone(), String::new())).collect();
    (ws, last)
}

#[test]
fn two_nodes_on_a_cluster_share_one_upstream_and_it_moves_when_its_holder_is_killed() {
    let masters = start_cluster_of(0);
    let symbols = symbols_on_every_shard(&masters);
    let sim = simulator_with_token(TOKEN, 20);
    let a = market_node(&masters, Some(&sim));
    let b = market_node(&masters, Some(&sim));
    let (mut ws_a, mut last_a) = client(&a, &symbols);
    let (mut ws_b, mut last_b) = client(&b, &symbols);
    trades_after(&mut ws_a, &mut last_a);
    trades_after(&mut ws_b, &mut last_b);
    println!("symbols {symbols:?}: trades on both nodes");
    let stats = sim.stats();
    println!("before the kill: {stats:?}");
    assert_eq!(stats.accepted, 1, "{stats:?}");
    for s in &symbols {
        assert_eq!(stats.subscribes.get(s), Some(&1), "{s}: {stats:?}");
    }
    let (holder, other, mut ws, mut last) = match (holds(&a), holds(&b)) {
        (true, false) => (&a, &b, ws_b, last_b),
        (false, true) => (&b, &a, ws_a, last_a),
        held => panic!("one holder, not {held:?}"),
    };
    let fence = other.metric("redix_market_lease_fence");
    let killed = Instant::now();
    holder.signal(9);
    wait_until("the other node to hold the lease", || holds(other));
    println!(
        "takeover after SIGKILL: {:?} (lease {LEASE_MS} ms)",
        killed.elapsed()
    );
    let new_fence = other.metric("redix_market_lease_fence");
    assert!(new_fence > fence, "{new_fence} > {fence}");
    wait_until("a second upstream connection", || sim.stats().accepted == 2);
    // The other node's clients get newer trades on every shard, and each
    // channel's fence holds the new holder's token.
    trades_after(&mut ws, &mut last);
    println!(
        "trades after the takeover: {last:?}, {:?} after SIGKILL",
        killed.elapsed()
    );
    for s in &symbols {
        let key = format!("rx:{{trades:{s}}}:fence");
        assert_eq!(get_key(&masters, &key), Some(format!("{new_fence}")));
    }
    let stats = sim.stats();
    println!("after the takeover: {stats:?}");
    assert_eq!(stats.peak_connections, 1, "never two at once: {stats:?}");
    assert_eq!(stats.same_token_drops, 0, "{stats:?}");
    for s in &symbols {
        assert_eq!(stats.subscribes.get(s), Some(&2), "{s}: {stats:?}");
    }
}

/// A channel that saw a higher token (a newer holder published there)
/// refuses the holder's trades atomically; the holder gives the lease up,
/// raises the counter past that token and, as the only node, takes the
/// lease again with a higher one: trades flow again.
#[test]
fn a_channel_with_a_higher_token_fences_the_holder() {
    let masters = start_cluster_of(0);
    let symbols = symbols_on_every_shard(&masters);
    let sim = simulator_with_token(TOKEN, 20);
    let a = market_node(&masters, Some(&sim));
    let (mut ws, mut last) = client(&a, &symbols[..1]);
    trades_after(&mut ws, &mut last);
    let fence = a.metric("redix_market_lease_fence") as u64;
    let higher = (fence + 5).to_string();
    let key = format!("rx:{{trades:{}}}:fence", symbols[0]);
    let set = owner(&masters, &key).command(&["SET", &key, &higher]);
    assert_eq!(set.as_deref(), Some("+OK\r\n"));
    let since = Instant::now();
    wait_until("a new upstream connection", || sim.stats().accepted == 2);
    println!("fenced: upstream reconnected {:?} later", since.elapsed());
    wait_until("a holds the lease again", || holds(&a));
    let now = a.metric("redix_market_lease_fence") as u64;
    assert!(now > fence + 5, "{now} > {}", fence + 5);
    trades_after(&mut ws, &mut last);
    assert_eq!(get_key(&masters, &key), Some(now.to_string()));
    let stats = sim.stats();
    assert_eq!(stats.peak_connections, 1, "{stats:?}");
    assert_eq!(stats.same_token_drops, 0, "{stats:?}");
}

/// A holder that reads its lease back as another node's closes its
/// upstream (the read-back before a batch, not only the renewal).
#[test]
fn a_holder_whose_lease_was_taken_closes_its_upstream() {
    let masters = start_cluster_of(0);
    let symbols = symbols_on_every_shard(&masters);
    let sim = simulator_with_token(TOKEN, 20);
    let a = market_node(&masters, Some(&sim));
    let (mut ws, mut last) = client(&a, &symbols[..1]);
    trades_after(&mut ws, &mut last);
    let counter = "rx:{market}:fence";
    let thief_fence = integer(owner(&masters, counter).command(&["INCR", counter]));
    let thief = format!("elsewhere {thief_fence}");
    let lease = "rx:{market}:lease";
    let set = owner(&masters, lease).command(&["SET", lease, &thief, "PX", "3000"]);
    assert_eq!(set.as_deref(), Some("+OK\r\n"));
    let since = Instant::now();
    wait_until("a gives the upstream up", || {
        !holds(&a) && sim.stats().connections == 0
    });
    println!(
        "upstream closed {:?} after the lease was taken",
        since.elapsed()
    );
    wait_until("a holds it again", || holds(&a));
    assert!(a.metric("redix_market_lease_fence") > thief_fence as f64);
    trades_after(&mut ws, &mut last);
}

/// Without `market.url`, the lease holder's built-in simulator feeds the
/// cluster: the demo works with Redis Cluster too.
#[test]
fn without_an_upstream_the_holder_runs_the_built_in_simulator() {
    let masters = start_cluster_of(0);
    let a = market_node(&masters, None);
    let b = market_node(&masters, None);
    let mut on_a = SseClient::connect(a.addr, "trades:AAPL");
    let mut on_b = SseClient::connect(b.addr, "trades:AAPL");
    for c in [&mut on_a, &mut on_b] {
        let ev = c.next_message().expect("a trade");
        let v: serde_json::Value = serde_json::from_str(&ev.data).expect("json");
        assert_eq!(v["data"][0]["s"], "AAPL");
    }
    let held = [&a, &b].iter().filter(|n| holds(n)).count();
    assert_eq!(held, 1, "one holder");
    let simulated = a.metric("redix_market_simulated") + b.metric("redix_market_simulated");
    assert_eq!(simulated, 1.0, "one simulator runs");
}
