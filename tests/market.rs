//! The market upstream against the Finnhub-protocol simulator: one
//! upstream subscription per symbol for every client, linger, reconnect
//! and resubscribe, silence detection, the plan's symbol limit, and the
//! latest trade for a new subscriber.

mod common;

use redix::market::sim::Sim;

use common::*;

const TOKEN: &str = "test-token";

fn simulator(trades_per_sec: u32) -> Sim {
    simulator_with_token(TOKEN, trades_per_sec)
}

/// redix fed by `sim`, with `extra` settings.
fn redix_on(sim: &Sim, extra: &[&str]) -> Server {
    let market = market_args(&format!("ws://{}", sim.addr()), TOKEN);
    let mut args: Vec<&str> = market.iter().map(String::as_str).collect();
    args.extend_from_slice(&[
        "--set",
        "limits.ws_per_ip=1000",
        "--set",
        "limits.sse_per_ip=1000",
    ]);
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    wait_until("the upstream", || {
        metric(server.addr, "redix_market_up") == 1.0
    });
    server
}

#[test]
fn a_hundred_and_twenty_clients_mean_one_upstream_subscription() {
    let sim = simulator(20);
    let server = redix_on(&sim, &["--set", "market.linger_ms=300"]);
    let mut ws: Vec<RawWs> = (0..100)
        .map(|_| RawWs::connect(server.addr, "/ws", &[]))
        .collect();
    for c in ws.iter_mut() {
        subscribe_symbol(c, "AAPL");
    }
    let mut sse: Vec<SseClient> = (0..20)
        .map(|_| SseClient::connect(server.addr, "trades:AAPL"))
        .collect();
    for c in ws.iter_mut() {
        assert_eq!(next_trade(c).1, "AAPL");
    }
    for c in sse.iter_mut() {
        let ev = c.next_message().expect("a trade");
        let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(v["channel"], "trades:AAPL");
        assert_eq!(v["data"][0]["s"], "AAPL");
    }
    let stats = sim.stats();
    assert_eq!(stats.connections, 1, "{stats:?}");
    assert_eq!(stats.subscribes.get("AAPL"), Some(&1), "{stats:?}");
    assert_eq!(metric(server.addr, "redix_market_symbols"), 1.0);
    // The last client leaves: one unsubscribe, after the linger.
    drop(ws);
    drop(sse);
    wait_until("the unsubscribe", || {
        sim.stats().unsubscribes.get("AAPL") == Some(&1)
    });
    wait_until("no symbol upstream", || {
        metric(server.addr, "redix_market_symbols") == 0.0
    });
    assert_eq!(sim.stats().unsubscribes.get("AAPL"), Some(&1));
    assert_eq!(sim.stats().subscribes.get("AAPL"), Some(&1));
}

#[test]
fn a_dropped_or_stalled_upstream_is_reconnected_and_resubscribed() {
    let sim = simulator(20);
    let server = redix_on(
        &sim,
        &[
            "--set",
            "market.silence_ms=800",
            "--set",
            "market.backoff_max_ms=200",
        ],
    );
    let mut ws = RawWs::connect(server.addr, "/ws", &[]);
    subscribe_symbol(&mut ws, "AAPL");
    subscribe_symbol(&mut ws, "MSFT");
    next_trade(&mut ws);
    // Dropped: a new connection, both symbols subscribed again.
    sim.drop_all();
    // Every connection after the drop subscribes both symbols again (on a
    // starved box the 800 ms silence may end one more link meanwhile).
    wait_until("the resubscribe", || {
        let s = sim.stats();
        s.accepted >= 2
            && s.subscribes.get("AAPL") == Some(&s.accepted)
            && s.subscribes.get("MSFT") == Some(&s.accepted)
    });
    let (before, _) = next_trade(&mut ws);
    // Stalled: no close, no data, no ping; silence ends the link.
    sim.set_stalled(true);
    wait_until("silence noticed", || {
        metric(server.addr, "redix_market_reconnects_total") >= 2.0
    });
    sim.set_stalled(false);
    wait_until("trades again", || {
        let (id, _) = next_trade(&mut ws);
        id > before
    });
    assert!(sim.stats().connections <= 1, "never two at once");
}

#[test]
fn the_fifty_first_symbol_is_refused_with_a_clear_error_and_nothing_else_changes() {
    let sim = simulator(1);
    let server = redix_on(&sim, &[]);
    let mut ws = RawWs::connect(server.addr, "/ws", &[]);
    for i in 1..=51 {
        subscribe_symbol(&mut ws, &format!("S{i:02}"));
    }
    let refused = loop {
        let f = ws.read_non_ping().expect("a frame");
        let v: serde_json::Value = serde_json::from_str(&f.text()).unwrap();
        if v["type"] == "error" {
            break v;
        }
    };
    assert_eq!(refused["code"], "symbol_limit", "{refused}");
    assert_eq!(refused["channel"], "trades:S51", "{refused}");
    wait_until("fifty upstream", || {
        metric(server.addr, "redix_market_symbols") == 50.0
    });
    wait_until("fifty subscribes at the simulator", || {
        sim.stats().subscribes.len() == 50
    });
    let stats = sim.stats();
    assert!(!stats.subscribes.contains_key("S51"));
    assert_eq!(metric(server.addr, "redix_market_refused_symbols"), 1.0);
}

#[test]
fn a_new_subscriber_gets_the_latest_trade_at_once() {
    let sim = simulator(5);
    let server = redix_on(&sim, &[]);
    let mut first = RawWs::connect(server.addr, "/ws", &[]);
    subscribe_symbol(&mut first, "NVDA");
    let (seen, _) = next_trade(&mut first);
    // The upstream goes quiet (no close): nothing new comes from it, so
    // what the late subscriber gets is the trade redix already had.
    sim.set_stalled(true);
    let mut late = RawWs::connect(server.addr, "/ws", &[]);
    subscribe_symbol(&mut late, "NVDA");
    let (got, symbol) = next_trade(&mut late);
    assert_eq!(symbol, "NVDA");
    assert!(got.parse::<u64>().unwrap() >= seen.parse::<u64>().unwrap());
}

/// With no `market.url`, `trades:*` comes from the built-in simulator,
/// started when the first subscriber comes; its sockets are on the books
/// (and in the `/debug/fds` census, as the market's);
/// trades channels cannot be published to while a feed runs.
#[test]
fn with_no_upstream_configured_the_built_in_simulator_serves_trades() {
    let server = Server::start(&[]);
    let before = fds_accounted(&server);
    assert_eq!(
        before["owned"]["market"], 0,
        "nothing until asked: {before}"
    );
    let mut sse = SseClient::connect(server.addr, "trades:AAPL");
    let ev = sse.next_message().expect("a simulated trade");
    let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(v["data"][0]["s"], "AAPL");
    assert_eq!(metric(server.addr, "redix_market_up"), 1.0);
    let fds = fds_accounted(&server);
    assert!(fds["owned"]["market"].as_u64() >= Some(3), "{fds}");
    // The census puts them with the market, by the simulator's port: its
    // listener, and both ends of the feed.
    let mut census = serde_json::Value::Null;
    wait_until("the simulator's sockets in the census", || {
        let (_, body) = get(server.addr, "/debug/fds");
        census = serde_json::from_str(&body).expect("json");
        census["unowned_total"] == 0 && census["fds_by_owner"]["market"].as_u64() >= Some(3)
    });
    let market = &census["tcp_by_owner"]["market"];
    assert_eq!(market["LISTEN"], 1, "{census}");
    assert!(market["ESTABLISHED"].as_u64() >= Some(2), "{census}");
    let (status, body) = try_publish(server.addr, r#"{"channel":"trades:AAPL","data":1}"#);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "market_channel");
}

/// `market.simulator=false`: no feed, `trades:*` are ordinary channels.
#[test]
fn the_simulator_can_be_turned_off() {
    let server = Server::start(&["--set", "market.simulator=false"]);
    let mut sse = SseClient::connect(server.addr, "trades:AAPL");
    let id = publish(server.addr, "trades:AAPL", r#"{"p":1}"#);
    assert_eq!(sse.next_message().and_then(|m| m.id), Some(id.to_string()));
    let (_, text) = get(server.addr, "/metrics/prom");
    assert!(!text.contains("redix_market_up"), "no market feed");
}

/// An upstream that keeps refusing opens the circuit breaker: subscribers
/// are told once (WebSocket error, SSE `event: error`), and trades flow
/// again when the upstream is back.
#[test]
fn a_refusing_upstream_opens_the_breaker_and_trades_resume_when_it_is_back() {
    let sim = simulator(20);
    let server = redix_on(&sim, &["--set", "market.backoff_max_ms=100"]);
    let mut ws = RawWs::connect(server.addr, "/ws", &[]);
    subscribe_symbol(&mut ws, "AAPL");
    let mut sse = SseClient::connect(server.addr, "trades:AAPL");
    next_trade(&mut ws);
    sim.set_refusing(true);
    sim.drop_all();
    let error = loop {
        let f = ws.read_non_ping().expect("a frame");
        let v: serde_json::Value = serde_json::from_str(&f.text()).unwrap();
        if v["type"] == "error" {
            break v;
        }
    };
    assert_eq!(error["code"], "upstream_unavailable", "{error}");
    assert_eq!(error["channel"], "trades:AAPL");
    let sse_error = loop {
        let ev = sse.next_event().expect("an event");
        if ev.event.as_deref() == Some("error") {
            break ev;
        }
    };
    assert!(
        sse_error.data.contains("upstream_unavailable"),
        "{}",
        sse_error.data
    );
    assert_eq!(metric(server.addr, "redix_market_breaker_open"), 1.0);
    sim.set_refusing(false);
    assert_eq!(next_trade(&mut ws).1, "AAPL");
    wait_until("the breaker closed", || {
        metric(server.addr, "redix_market_breaker_open") == 0.0
    });
}

/// A client that stops reading a busy `trades:*` channel is conflated,
/// not dropped as slow: its queue keeps the newest trade per symbol, it
/// stays connected, and when it reads again trades go on.
#[test]
fn a_stalled_reader_of_trades_is_conflated_not_disconnected() {
    let sim = simulator(1000);
    let server = redix_on(
        &sim,
        &[
            "--set",
            "queue.max_events=8",
            "--set",
            "queue.max_bytes=16384",
            "--set",
            "limits.max_body_bytes=8192",
            "--set",
            "tcp.send_buffer=4096",
        ],
    );
    // A small receive buffer, and no reading for now.
    let mut ws = RawWs::connect_small(server.addr, "/ws");
    subscribe_symbol(&mut ws, "AAPL");
    wait_until("conflation", || {
        metric(server.addr, "redix_events_conflated_total") >= 100.0
    });
    assert_eq!(metric(server.addr, "redix_slow_disconnects_total"), 0.0);
    assert_eq!(
        metric(server.addr, "redix_connections{transport=\"ws\"}"),
        1.0
    );
    // Reading again: trades keep coming.
    for _ in 0..20 {
        assert_eq!(next_trade(&mut ws).1, "AAPL");
    }
}
