//! Hardening: what a hostile or broken peer can make the server hold or
//! wait for. Every test runs the real server over real sockets and checks
//! bounds while other clients keep being served.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::fake_redis::FakeRedis;
use common::*;

/// Writes `total` bytes of pipelined `GET path` requests and never reads;
/// stops early when the server stops taking them (a write blocks for a
/// second) or closes. Returns the bytes written and the open socket.
fn pipeline_without_reading(
    addr: std::net::SocketAddr,
    path: &str,
    total: usize,
) -> (usize, TcpStream) {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let one = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let chunk = one.repeat(64 * 1024 / one.len());
    let mut sent = 0;
    let mut w = &stream;
    while sent < total {
        match w.write(chunk.as_bytes()) {
            Ok(0) | Err(_) => break,
            Ok(n) => sent += n,
        }
    }
    (sent, stream)
}

/// Finding 1 of the hardening review: a client that pipelines requests
/// (`/metrics/prom`: ~5 KB answered for ~40 B asked) and never reads its
/// answers must not grow the server's memory, and must not stall the
/// reactor: a subscriber on the same server keeps getting events and
/// `/readyz` keeps answering. A write deadline ends the silent peer.
#[test]
fn a_client_that_pipelines_and_never_reads_holds_bounded_memory_and_stalls_nobody() {
    let server = Server::start(&["--workers", "1", "--set", "limits.write_timeout_ms=3000"]);
    let mut sse = SseClient::connect(server.addr, "live");
    assert_eq!(sse.status, 200);
    let rss_before = server.rss_kib();
    let started = Instant::now();
    let (sent, attacker) = pipeline_without_reading(server.addr, "/metrics/prom", 4 << 20);
    // Whatever it took, the one reactor is still turning for others.
    let id = publish(server.addr, "live", r#"{"n":1}"#);
    let got = sse.next_message().expect("the subscriber's event");
    assert_eq!(got.id, Some(id.to_string()));
    assert_eq!(get(server.addr, "/readyz").0, 200);
    let grown = server.rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 16 * 1024,
        "RSS grew by {grown} KiB for {sent} bytes of pipelined requests in {:?}",
        started.elapsed()
    );
    // The peer never reads: its queued answers make no progress, and the
    // write deadline closes it.
    let timeouts = "redix_write_timeouts_total";
    wait_until("the write deadline", || {
        metric(server.addr, timeouts) >= 1.0
    });
    drop(attacker);
    assert_eq!(
        metric(server.addr, "redix_connections{transport=\"http\"}"),
        1.0
    );
}

/// Finding 6: in Redis mode every publish parks its request until Redis
/// answers; each park used to leave a timer entry that re-armed itself for
/// ever, so a keep-alive publisher doing N publishes left N live entries.
/// Timers must stay O(live connections).
#[test]
fn a_keep_alive_publisher_in_redis_mode_leaves_one_timer_entry() {
    let redis = RedisServer::start();
    let node = redis_node(&redis, &["--workers", "1"]);
    // Connections closed before (readiness polls) leave entries that
    // expire with their deadlines; count from here.
    let before = metric(node.addr, "redix_timer_entries");
    let mut publisher = Publisher::connect(node.addr);
    for i in 0..300 {
        publisher.publish_id("timers", &format!("{i}"));
    }
    // The publisher's two (its idle deadline, and the earlier one of its
    // first park), one each for the two scrapes' connections: four,
    // whatever the number of publishes (the old scheme left 907).
    let entries = metric(node.addr, "redix_timer_entries");
    assert!(
        entries - before <= 4.0,
        "{before} → {entries} timer entries over 300 publishes"
    );
}

/// Finding 13: a partly received message used to be kept as long as the
/// client kept sending pings. It now has a deadline of its own.
#[test]
fn a_message_that_never_completes_is_closed_even_while_the_client_pings() {
    let server = Server::start(&[
        "--set",
        "ws.ping_ms=100",
        "--set",
        "ws.idle_timeout_ms=10000",
        "--set",
        "ws.message_timeout_ms=300",
    ]);
    let mut ws = RawWs::connect(server.addr, "/ws", &[]);
    // The first fragment of a text message (FIN clear), never continued.
    ws.send_frame(0x01, br#"{"type":"#, true);
    let started = Instant::now();
    let close = loop {
        assert!(started.elapsed() < DEADLINE, "never closed");
        ws.send_frame(0x89, b"alive", true);
        match ws.read_frame() {
            Some(f) if f.opcode == 0x8 => break f.close_code(),
            Some(_) => continue,
            None => panic!("connection ended without a close frame"),
        }
    };
    assert_eq!(close, (1008, "message not completed in time".to_string()));
}

/// The reply to the next JSON command: its `type` and, for errors, `code`.
fn next_reply(ws: &mut RawWs) -> (String, String) {
    let f = ws.read_non_ping().expect("a reply");
    let v: serde_json::Value = serde_json::from_str(&f.text()).expect("json");
    let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (field("type"), field("code"))
}

/// Finding 7: subscribe churn. A connection's subscribe commands have a
/// rate, and a client IP has a budget of channels nobody listens to yet
/// (each costs a hub entry, and in Redis mode a SUBSCRIBE and a load);
/// channels that exist cost nothing from it.
#[test]
fn subscribe_churn_is_bounded_per_connection_and_per_ip() {
    let server = Server::start(&[
        "--set",
        "ws.subscribes_per_min=1",
        "--set",
        "ws.subscribe_burst=4",
        "--set",
        "limits.new_channels_per_min=1",
        "--set",
        "limits.new_channel_burst=3",
    ]);
    let mut owner = RawWs::connect(server.addr, "/ws", &[]);
    ws_subscribe(&mut owner, "existing");
    let mut churn = RawWs::connect(server.addr, "/ws", &[]);
    let mut replies = Vec::new();
    for name in ["n1", "n2", "existing", "n3", "n4"] {
        churn.send_text(&format!(r#"{{"type":"subscribe","channel":"{name}"}}"#));
        replies.push(next_reply(&mut churn));
    }
    let sub = |t: &str| (t.to_string(), String::new());
    let err = |c: &str| ("error".to_string(), c.to_string());
    // The IP's budget had three new channels (one went to "existing"'s
    // owner); "existing" costs none; the fifth command is over the rate.
    assert_eq!(
        replies,
        [
            sub("subscribed"),
            sub("subscribed"),
            sub("subscribed"),
            err("too_many_new_channels"),
            err("rate_limited"),
        ]
    );
    // An SSE stream naming a new channel is refused too, with a hint.
    let sse = SseClient::connect(server.addr, "n5");
    assert_eq!(sse.status, 429);
    assert!(sse.head.contains("Retry-After: "), "{}", sse.head);
    let m = |r: &str| {
        server.metric(&format!(
            "redix_connections_rejected_total{{reason=\"{r}\"}}"
        ))
    };
    assert_eq!((m("new_channels"), m("subscribe_rate")), (2.0, 1.0));
}

/// Finding 7, Redis side: every new channel costs a SUBSCRIBE and a
/// history load on the command thread. Loads now have their own queue and
/// run a pipeline per turn between publishes, so a flood of subscribes to
/// new names (against a Redis slow to answer loads) cannot turn publishes
/// into 503s.
#[test]
fn a_flood_of_new_channels_does_not_starve_publishes_in_redis_mode() {
    let fake = FakeRedis::start();
    // 10 ms a load: the command thread cannot keep up with the flood (a
    // pipeline of loads stays well within the command timeout).
    fake.slow_loads(10);
    let url = fake.url();
    let node = Server::start(&[
        "--redis",
        &url,
        "--set",
        "redis.queue=16",
        "--set",
        "redis.timeout_ms=5000",
        "--set",
        "limits.new_channels_per_min=0",
        "--set",
        "ws.subscribes_per_min=0",
        "--set",
        "ws.max_subscriptions=1000",
    ]);
    wait_until("ready", || get(node.addr, "/readyz").0 == 200);
    let mut floods: Vec<RawWs> = (0..4)
        .map(|_| RawWs::connect(node.addr, "/ws", &[]))
        .collect();
    for (i, ws) in floods.iter_mut().enumerate() {
        for k in 0..500 {
            ws.send_text(&format!(
                r#"{{"type":"subscribe","channel":"flood-{i}-{k}"}}"#
            ));
        }
    }
    // The loads are queued: 2,000 channels subscribed, loads behind them.
    let subscribed = "redix_redis_channels_subscribed";
    wait_until("the flood's SUBSCRIBEs", || {
        metric(node.addr, subscribed) >= 2000.0
    });
    let answers: Vec<(u16, serde_json::Value)> = (0..20)
        .map(|n| try_publish(node.addr, &format!(r#"{{"channel":"pub","data":{n}}}"#)))
        .collect();
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
}

/// A seeded mix of what a hostile peer might pipeline: requests of every
/// kind (the expensive `/metrics/prom`, upgrades, streams, publishes),
/// half-sent heads, WebSocket frames and raw garbage.
fn hostile_stream(rng: &mut Rng, len: usize, valid_only: bool) -> Vec<u8> {
    let pieces: [&[u8]; 8] = [
        b"GET /metrics/prom HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/stream?channels=h HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        b"\x89\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 24\r\n\r\n{\"channel\":\"h\",\"data\":1}",
        b"GET /healthz HTTP/1.1\r\nX-Pad: ",
        b"\x00\xff\r\n\r\nGARBAGE",
    ];
    // Requests that keep a connection in plain HTTP, for peers that
    // should stay pipelining until the server stops reading them.
    const VALID: [usize; 3] = [0, 1, 5];
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let i = match valid_only {
            true => VALID[rng.below(VALID.len() as u64) as usize],
            false => rng.below(pieces.len() as u64) as usize,
        };
        out.extend_from_slice(pieces[i]);
    }
    out
}

/// The connection-level harness of the hardening review: 40 peers pipeline
/// seeded hostile byte streams (half of them only valid requests, so they
/// pipeline until the server stops reading them) and never read. Memory, timers and the
/// reactors stay bounded: each connection holds at most its read buffer
/// and `queue.max_bytes` of answers, the read budget is what takes their
/// bytes, and a subscriber keeps getting its events throughout.
#[test]
fn hostile_pipelined_streams_that_are_never_read_stay_bounded() {
    let server = Server::start(&["--set", "limits.write_timeout_ms=2000"]);
    let mut sse = SseClient::connect(server.addr, "calm");
    let rss_before = server.rss_kib();
    let peers: Vec<std::thread::JoinHandle<Option<TcpStream>>> = (0..40u64)
        .map(|i| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut rng = Rng(0x5eed_0000 + i);
                let bytes = hostile_stream(&mut rng, 256 * 1024, i % 2 == 0);
                let s = TcpStream::connect(addr).ok()?;
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = (&s).write_all(&bytes);
                // Never read: the socket goes back to the test, open.
                Some(s)
            })
        })
        .collect();
    let held: Vec<TcpStream> = peers.into_iter().filter_map(|p| p.join().ok()?).collect();
    for n in 0..10 {
        let id = publish(server.addr, "calm", &n.to_string());
        let got = sse.next_message().expect("an event");
        assert_eq!(got.id, Some(id.to_string()));
    }
    let grown = server.rss_kib().saturating_sub(rss_before);
    // 40 × (72 KiB of read buffer + 256 KiB of answers) = 13 MiB at most.
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
    let entries = metric(server.addr, "redix_timer_entries");
    assert!(
        entries <= 4.0 * 42.0,
        "{entries} timer entries for 42 connections"
    );
    assert!(metric(server.addr, "redix_reads_deferred_total") >= 1.0);
    assert_eq!(get(server.addr, "/readyz").0, 200);
    // Peers that never read are ended by the write deadline.
    wait_until("the write deadline", || {
        metric(server.addr, "redix_write_timeouts_total") >= 1.0
    });
    drop(held);
}
