//! The Finnhub simulator over real sockets: the protocol a market bridge
//! will see, its quirks, and the controls tests use to break it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::wait_until;
use redix::market::sim::{self, Sim, SimConfig, TOO_MANY_SYMBOLS};
use serde_json::Value;
use tungstenite::{Message, WebSocket};

const DEADLINE: Duration = Duration::from_secs(10);

type Ws = WebSocket<TcpStream>;

fn start(config: SimConfig) -> Sim {
    sim::start(config).expect("start simulator")
}

fn quiet() -> SimConfig {
    SimConfig {
        trades_per_sec: 0,
        ping_ms: 0,
        ..Default::default()
    }
}

fn try_connect(addr: SocketAddr, token: &str) -> Result<Ws, tungstenite::Error> {
    let stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let url = format!("ws://{addr}/?token={token}");
    match tungstenite::client(url.as_str(), stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(mut mid)) => {
            let end = Instant::now() + DEADLINE;
            loop {
                match mid.handshake() {
                    Ok((ws, _)) => return Ok(ws),
                    Err(tungstenite::HandshakeError::Failure(e)) => return Err(e),
                    Err(tungstenite::HandshakeError::Interrupted(m)) if Instant::now() < end => {
                        mid = m
                    }
                    Err(_) => panic!("handshake timed out"),
                }
            }
        }
    }
}

fn connect(addr: SocketAddr, token: &str) -> Ws {
    try_connect(addr, token).expect("websocket handshake")
}

fn send(ws: &mut Ws, kind: &str, symbol: &str) {
    let text = format!(r#"{{"type":"{kind}","symbol":"{symbol}"}}"#);
    ws.send(Message::text(text)).expect("send");
}

/// What one read gave.
#[derive(Debug)]
enum Got {
    Json(Value),
    Nothing,
    Closed,
}

fn read(ws: &mut Ws) -> Got {
    match ws.read() {
        Ok(Message::Text(t)) => Got::Json(serde_json::from_str(t.as_str()).expect("JSON text")),
        Ok(_) => Got::Nothing,
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Got::Nothing
        }
        Err(_) => Got::Closed,
    }
}

/// Reads until a message satisfies `want`, or panics at the deadline.
fn wait_for(ws: &mut Ws, what: &str, mut want: impl FnMut(&Value) -> bool) -> Value {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        match read(ws) {
            Got::Json(v) if want(&v) => return v,
            Got::Closed => panic!("closed while waiting for {what}"),
            _ => {}
        }
    }
    panic!("no {what} within {DEADLINE:?}");
}

/// Reads until the connection is closed (a close frame, EOF or reset).
fn wait_closed(ws: &mut Ws) {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        if let Got::Closed = read(ws) {
            return;
        }
    }
    panic!("still open after {DEADLINE:?}");
}

/// One plain HTTP request; returns (status, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: sim\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read answer");
    let status = raw.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |p| p.1).to_string();
    (status, body)
}

fn is_trade_for(v: &Value, symbol: &str) -> bool {
    v["type"] == "trade"
        && v["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|t| t["s"] == symbol))
}

#[test]
fn subscribe_delivers_trades_in_finnhub_shape() {
    let sim = start(SimConfig {
        trades_per_sec: 50,
        ping_ms: 100,
        ..Default::default()
    });
    let mut ws = connect(sim.addr(), "k1");
    send(&mut ws, "subscribe", "AAPL");
    send(&mut ws, "subscribe", "BINANCE:BTCUSDT");
    let (mut aapl, mut btc) = (0, 0);
    let before = SystemTimeMs::now();
    wait_for(&mut ws, "trades of both symbols", |v| {
        if v["type"] != "trade" {
            return false;
        }
        for t in v["data"].as_array().expect("data array") {
            let keys: Vec<&String> = t.as_object().expect("trade object").keys().collect();
            assert_eq!(keys, ["s", "p", "t", "v", "c"], "{t}");
            assert!(t["p"].as_f64().expect("p number") > 0.0);
            let at = t["t"].as_u64().expect("t integer ms");
            assert!(
                at + 1000 >= before.0 && at < before.0 + 60_000,
                "t {at} is wall ms"
            );
            assert!(t["v"].is_u64());
            assert!(t["c"]
                .as_array()
                .expect("c array")
                .iter()
                .all(Value::is_string));
            match t["s"].as_str() {
                Some("AAPL") => aapl += 1,
                Some("BINANCE:BTCUSDT") => btc += 1,
                other => panic!("trade for {other:?}, never subscribed"),
            }
        }
        aapl >= 5 && btc >= 5
    });
    wait_for(&mut ws, "a ping", |v| {
        *v == serde_json::json!({"type": "ping"})
    });
    // After an unsubscribe, only the other symbol trades (frames already
    // sent or re-sent may still name it for a moment).
    send(&mut ws, "unsubscribe", "AAPL");
    wait_until("the unsubscribe counted", || {
        sim.stats().unsubscribes.get("AAPL") == Some(&1)
    });
    let quiet_from = Instant::now() + Duration::from_millis(200);
    let mut btc_after = 0;
    wait_for(&mut ws, "BTC trades without AAPL", |v| {
        if Instant::now() > quiet_from && v["type"] == "trade" {
            assert!(!is_trade_for(v, "AAPL"), "AAPL after unsubscribe: {v}");
            btc_after += 1;
        }
        btc_after >= 5
    });
}

struct SystemTimeMs(u64);

impl SystemTimeMs {
    fn now() -> SystemTimeMs {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        SystemTimeMs(d.as_millis() as u64)
    }
}

#[test]
fn silent_symbols_never_trade() {
    let sim = start(SimConfig {
        trades_per_sec: 100,
        ping_ms: 0,
        silent_symbols: vec!["QUIET".into()],
        ..Default::default()
    });
    let mut ws = connect(sim.addr(), "k");
    for symbol in ["SILENT1", "QUIET", "MSFT"] {
        send(&mut ws, "subscribe", symbol);
    }
    let mut msft = 0;
    wait_for(&mut ws, "50 MSFT frames", |v| {
        assert!(
            !is_trade_for(v, "SILENT1") && !is_trade_for(v, "QUIET"),
            "{v}"
        );
        msft += usize::from(is_trade_for(v, "MSFT"));
        msft >= 50
    });
}

#[test]
fn fifty_first_symbol_is_refused_until_one_is_unsubscribed() {
    let sim = start(quiet());
    let mut ws = connect(sim.addr(), "k");
    for i in 0..50 {
        send(&mut ws, "subscribe", &format!("S{i}"));
    }
    // Re-subscribing a subscribed symbol takes no slot.
    send(&mut ws, "subscribe", "S0");
    send(&mut ws, "subscribe", "S50");
    let error = wait_for(&mut ws, "the error", |v| v["type"] == "error");
    assert_eq!(
        error,
        serde_json::json!({"type": "error", "msg": TOO_MANY_SYMBOLS})
    );
    assert_eq!(error["msg"], "Subscribing to too many symbols");
    send(&mut ws, "unsubscribe", "S3");
    send(&mut ws, "subscribe", "S50");
    send(&mut ws, "subscribe", "S51");
    // Exactly one more error: S50 took the freed slot, S51 did not fit.
    wait_for(&mut ws, "the second error", |v| v["type"] == "error");
    wait_until("all counted", || {
        sim.stats().subscribes.get("S51") == Some(&1)
    });
    let stats = sim.stats();
    assert_eq!(stats.subscribes.get("S0"), Some(&2));
    assert_eq!(stats.subscribes.get("S50"), Some(&2));
    assert_eq!(stats.unsubscribes.get("S3"), Some(&1));
    let end = Instant::now() + Duration::from_millis(200);
    while Instant::now() < end {
        if let Got::Json(v) = read(&mut ws) {
            panic!("unexpected {v}");
        }
    }
}

#[test]
fn same_token_twice_drops_both() {
    let sim = start(quiet());
    let mut first = connect(sim.addr(), "shared");
    let mut other = connect(sim.addr(), "other");
    wait_until("two connections", || sim.stats().connections == 2);
    let mut second = connect(sim.addr(), "shared");
    wait_closed(&mut first);
    wait_closed(&mut second);
    wait_until("one connection left", || sim.stats().connections == 1);
    // The other key is untouched, and the shared key works again.
    send(&mut other, "subscribe", "AAPL");
    let mut third = connect(sim.addr(), "shared");
    send(&mut third, "subscribe", "MSFT");
    wait_until("both subscribes", || {
        let s = sim.stats();
        s.subscribes.get("AAPL") == Some(&1) && s.subscribes.get("MSFT") == Some(&1)
    });
    let stats = sim.stats();
    assert_eq!(stats.connections, 2);
    assert_eq!(stats.accepted, 4);
    assert_eq!(stats.same_token_drops, 1, "counted: {stats:?}");
    assert_eq!(stats.peak_connections, 3);
}

#[test]
fn wrong_token_is_refused_with_401() {
    let sim = start(SimConfig {
        token: Some("right".into()),
        ..quiet()
    });
    for token in ["wrong", ""] {
        match try_connect(sim.addr(), token) {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("token {token:?}: {:?}", other.map(|_| "connected")),
        }
    }
    let mut ws = connect(sim.addr(), "right");
    send(&mut ws, "subscribe", "AAPL");
    wait_until("the subscribe", || {
        sim.stats().subscribes.get("AAPL") == Some(&1)
    });
    assert_eq!(sim.stats().accepted, 1);
}

#[test]
fn stats_over_http() {
    let sim = start(quiet());
    let (status, body) = http(sim.addr(), "GET", "/stats");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        r#"{"connections":0,"peak_connections":0,"same_token_drops":0,"accepted":0,"subscribes":{},"unsubscribes":{}}"#
    );
    let mut a = connect(sim.addr(), "a");
    let mut b = connect(sim.addr(), "b");
    send(&mut a, "subscribe", "AAPL");
    send(&mut b, "subscribe", "AAPL");
    send(&mut b, "subscribe", "MSFT");
    send(&mut b, "unsubscribe", "MSFT");
    wait_until("all counted", || sim.stats().unsubscribes.len() == 1);
    let (status, body) = http(sim.addr(), "GET", "/stats");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).expect("stats JSON");
    assert_eq!(
        v,
        serde_json::json!({
            "connections": 2,
            "peak_connections": 2,
            "same_token_drops": 0,
            "accepted": 2,
            "subscribes": {"AAPL": 2, "MSFT": 1},
            "unsubscribes": {"MSFT": 1},
        })
    );
    assert_eq!(http(sim.addr(), "POST", "/stats").0, 405);
    assert_eq!(http(sim.addr(), "POST", "/control/explode").0, 404);
    assert_eq!(http(sim.addr(), "GET", "/control/drop").0, 405);
    a.close(None).unwrap();
    wait_closed(&mut a);
    wait_until("one connection", || sim.stats().connections == 1);
}

#[test]
fn drop_all_closes_every_connection_and_reconnects_work() {
    let sim = start(quiet());
    let mut a = connect(sim.addr(), "a");
    let mut b = connect(sim.addr(), "b");
    wait_until("two connections", || sim.stats().connections == 2);
    sim.drop_all();
    wait_closed(&mut a);
    wait_closed(&mut b);
    wait_until("none left", || sim.stats().connections == 0);
    let mut c = connect(sim.addr(), "a");
    send(&mut c, "subscribe", "AAPL");
    wait_until("the subscribe", || {
        sim.stats().subscribes.get("AAPL") == Some(&1)
    });
    // The same over HTTP.
    assert_eq!(
        http(sim.addr(), "POST", "/control/drop"),
        (200, r#"{"ok":true}"#.into())
    );
    wait_closed(&mut c);
}

#[test]
fn stalled_sends_nothing_and_reads_nothing_until_unstalled() {
    let sim = start(SimConfig {
        trades_per_sec: 50,
        ping_ms: 50,
        ..Default::default()
    });
    let mut ws = connect(sim.addr(), "k");
    send(&mut ws, "subscribe", "AAPL");
    wait_for(&mut ws, "a trade", |v| is_trade_for(v, "AAPL"));
    sim.set_stalled(true);
    // Drain what was in flight, then expect silence while stalled.
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_millis(300) {
        match read(&mut ws) {
            Got::Json(_) => last = Instant::now(),
            Got::Closed => panic!("closed while stalled"),
            Got::Nothing => {}
        }
    }
    send(&mut ws, "subscribe", "MSFT");
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        if let Got::Json(v) = read(&mut ws) {
            panic!("stalled but sent {v}");
        }
    }
    assert_eq!(
        sim.stats().subscribes.get("MSFT"),
        None,
        "input read while stalled"
    );
    assert_eq!(sim.stats().connections, 1, "a stall keeps the connection");
    // Over HTTP: unstall; the unread subscribe is read now.
    assert_eq!(http(sim.addr(), "POST", "/control/unstall").0, 200);
    wait_for(&mut ws, "an MSFT trade", |v| is_trade_for(v, "MSFT"));
    assert_eq!(http(sim.addr(), "POST", "/control/stall").0, 200);
    sim.set_stalled(false);
    wait_for(&mut ws, "trades again", |v| is_trade_for(v, "AAPL"));
}

#[test]
fn refusing_answers_503_and_accept_restores() {
    let sim = start(quiet());
    let mut open = connect(sim.addr(), "open");
    sim.set_refusing(true);
    match try_connect(sim.addr(), "new") {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("{:?}", other.map(|_| "connected")),
    }
    // Existing connections stay; stats and controls still answer.
    send(&mut open, "subscribe", "AAPL");
    wait_until("the subscribe", || {
        sim.stats().subscribes.get("AAPL") == Some(&1)
    });
    assert_eq!(http(sim.addr(), "GET", "/stats").0, 200);
    assert_eq!(http(sim.addr(), "POST", "/control/accept").0, 200);
    let _new = connect(sim.addr(), "new");
    assert_eq!(http(sim.addr(), "POST", "/control/refuse").0, 200);
    assert!(matches!(
        try_connect(sim.addr(), "newer"),
        Err(tungstenite::Error::Http(_))
    ));
    sim.set_refusing(false);
    let _newer = connect(sim.addr(), "newer");
    wait_until("three connections", || sim.stats().connections == 3);
}

#[test]
fn dropping_the_sim_closes_its_connections_and_listener() {
    let sim = start(quiet());
    let addr = sim.addr();
    let mut ws = connect(addr, "k");
    wait_until("connected", || sim.stats().connections == 1);
    drop(sim);
    wait_closed(&mut ws);
    assert!(TcpStream::connect(addr).is_err(), "listener still open");
}

#[test]
fn subcommand_prints_its_listening_line_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_redix"))
        .args([
            "finnhub-sim",
            "--listen",
            "127.0.0.1:0",
            "--rate",
            "20",
            "--ping-ms",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redix finnhub-sim");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read line");
    let addr: SocketAddr = line
        .strip_prefix("finnhub-sim listening on ")
        .and_then(|a| a.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    assert_ne!(addr.port(), 0);
    let mut ws = connect(addr, "k");
    send(&mut ws, "subscribe", "AAPL");
    wait_for(&mut ws, "a trade", |v| is_trade_for(v, "AAPL"));
    let (status, body) = http(addr, "GET", "/stats");
    assert_eq!(status, 200);
    assert!(body.contains(r#""subscribes":{"AAPL":1}"#), "{body}");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let mut exited = None;
    wait_until("the simulator to exit after SIGTERM", || {
        exited = child.try_wait().expect("wait");
        exited.is_some()
    });
    let status = exited.expect("an exit status");
    assert!(status.success(), "{status}");
    wait_closed(&mut ws);
}

/// `--no-duplicates` and `--silent` reach the simulator's configuration.
#[test]
fn the_subcommand_flags_shape_the_feed() {
    use clap::Parser;
    let cli = redix::config::Cli::parse_from([
        "redix",
        "finnhub-sim",
        "--no-duplicates",
        "--silent",
        "AAA,BBB",
    ]);
    let Some(redix::config::Subcommand::FinnhubSim(args)) = cli.command else {
        panic!("not the simulator");
    };
    let config = args.sim_config();
    assert!(!config.duplicates);
    assert_eq!(config.silent_symbols, ["AAA", "BBB"]);
}
