//! Delivery guarantees against the real server: lossless resume over
//! several channels under churn, slow-consumer resume, resets, idempotent
//! publish, and hub memory bounded by the sweep.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use common::*;

const CHANNELS: [&str; 3] = ["c0", "c1", "c2"];

/// Deterministic per-client randomness (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The channels client `i` listens to: one, two or all three.
fn channels_of(i: usize) -> Vec<&'static str> {
    match i % 3 {
        0 => vec![CHANNELS[i % 3]],
        1 => vec!["c0", "c2"],
        _ => CHANNELS.to_vec(),
    }
}

/// An SSE client that drops its connection at random moments (half of the
/// time with RST) and comes back with its last id until it has seen the
/// `{"end":true}` event of each of its channels. Returns (channel, id) in
/// order.
fn churning_sse(addr: SocketAddr, i: usize) -> Vec<(String, u64)> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1000_0001));
    let chans = channels_of(i).join(",");
    let mut got: Vec<(String, u64)> = Vec::new();
    let mut ended = 0;
    loop {
        // From 0 the first time: everything since the start, whenever this
        // client happens to connect.
        let cursor = format!("&lastEventId={}", got.last().map_or(0, |(_, id)| *id));
        let mut c = SseClient::connect(addr, &format!("{chans}{cursor}"));
        assert_eq!(c.status, 200, "client {i}: {}", c.head);
        let mut budget = 20 + rng.below(400);
        while budget > 0 {
            let Some(ev) = c.next_message() else { break };
            assert_eq!(ev.event.as_deref(), Some("message"), "client {i}: {ev:?}");
            let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
            let id: u64 = ev.id.unwrap().parse().unwrap();
            got.push((v["channel"].as_str().unwrap().to_string(), id));
            budget -= 1;
            ended += usize::from(v["data"]["end"] == true);
            if ended == channels_of(i).len() {
                return got;
            }
        }
        if rng.below(2) == 0 {
            c.abort();
        }
    }
}

/// A WebSocket client that churns the same way, resuming each channel from
/// the last id it got on that channel.
fn churning_ws(addr: SocketAddr, i: usize) -> Vec<(String, u64)> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ ((i as u64 + 7) * 0x3000_0001));
    let chans = channels_of(i);
    let mut got: Vec<(String, u64)> = Vec::new();
    let mut ended = 0;
    loop {
        let mut ws = RawWs::connect(addr, "/ws", &[]);
        assert_eq!(ws.status, 101);
        for ch in &chans {
            let since = got
                .iter()
                .rev()
                .find(|(c, _)| c == ch)
                .map_or(0, |(_, id)| *id);
            ws.send_text(&format!(
                r#"{{"type":"subscribe","channel":"{ch}","since":"{since}"}}"#
            ));
        }
        let mut budget = 20 + rng.below(400);
        while budget > 0 {
            let Some(frame) = ws.read_non_ping() else {
                break;
            };
            let v: serde_json::Value = serde_json::from_str(&frame.text()).unwrap();
            match v["type"].as_str() {
                Some("subscribed") => continue,
                Some("message") => {}
                other => panic!("client {i}: unexpected {other:?}: {v}"),
            }
            let id: u64 = v["id"].as_str().unwrap().parse().unwrap();
            got.push((v["channel"].as_str().unwrap().to_string(), id));
            budget -= 1;
            ended += usize::from(v["data"]["end"] == true);
            if ended == chans.len() {
                return got;
            }
        }
        if rng.below(2) == 0 {
            ws.abort();
        }
    }
}

#[test]
fn clients_that_drop_and_resume_at_random_get_every_event_once_in_order() {
    const EVENTS: usize = 20_000;
    let server = Server::start(&[
        "--sse-per-ip",
        "500",
        "--set",
        "limits.ws_per_ip=500",
        "--set",
        "history.max_events=20000",
        "--set",
        "queue.max_events=100000",
        "--set",
        "queue.max_bytes=67108864",
    ]);
    let addr = server.addr;
    let clients: Vec<_> = (0..100)
        .map(|i| {
            std::thread::spawn(move || match i % 2 {
                0 => churning_sse(addr, i),
                _ => churning_ws(addr, i),
            })
        })
        .collect();
    // A steady stream: one publish at a time, each answered before the next.
    let mut published: Vec<(String, u64)> = Vec::with_capacity(EVENTS);
    let mut publisher = Publisher::connect(addr);
    for n in 0..EVENTS {
        let ch = CHANNELS[n % 3];
        published.push((
            ch.to_string(),
            publisher.publish(ch, &format!(r#"{{"n":{n}}}"#)),
        ));
    }
    for ch in CHANNELS {
        published.push((ch.to_string(), publisher.publish(ch, r#"{"end":true}"#)));
    }
    for (i, handle) in clients.into_iter().enumerate() {
        let got = handle
            .join()
            .unwrap_or_else(|_| panic!("client {i} failed"));
        let chans = channels_of(i);
        for ch in &chans {
            let want: Vec<u64> = published
                .iter()
                .filter(|(c, _)| c == ch)
                .map(|(_, id)| *id)
                .collect();
            let have: Vec<u64> = got
                .iter()
                .filter(|(c, _)| c == ch)
                .map(|(_, id)| *id)
                .collect();
            assert_eq!(have.len(), want.len(), "client {i} channel {ch}: count");
            assert!(have == want, "client {i} channel {ch}: events differ");
        }
        if i % 2 == 0 {
            // One SSE stream: one cursor, events of all channels in id order.
            assert!(
                got.windows(2).all(|w| w[0].1 < w[1].1),
                "client {i}: stream order"
            );
        }
    }
    assert_eq!(server.metric("redix_slow_disconnects_total"), 0.0);
    assert!(server.metric("redix_replayed_total") > 0.0);
}

#[test]
fn a_slow_client_resumes_from_its_slow_event_and_an_old_cursor_gets_reset() {
    let server = Server::start(&[
        "--set",
        "queue.max_events=20",
        "--set",
        "tcp.send_buffer=4096",
        "--set",
        "history.max_events=1000",
        "--set",
        "shutdown.linger_ms=15000",
    ]);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut slow = SseClient::connect_with(server.addr, "slowpoke", Some(sock));
    let pad = "z".repeat(1000);
    let mut publisher = Publisher::connect(server.addr);
    let mut ids = Vec::new();
    while server.metric("redix_slow_disconnects_total") < 1.0 {
        ids.push(publisher.publish("slowpoke", &format!(r#""{pad}""#)));
        assert!(ids.len() < 900, "never disconnected");
    }
    ids.extend((0..5).map(|_| publisher.publish("slowpoke", "1")));
    let mut got = Vec::new();
    let slow_event = loop {
        let ev = slow.next_event().expect("stream ends with event: slow");
        match ev.event.as_deref() {
            Some("message") => got.push(ev.id.unwrap().parse::<u64>().unwrap()),
            Some("slow") => break ev,
            _ => {}
        }
    };
    let resume = slow_event.id.expect("slow carries an id");
    // Back with that id: exactly the rest.
    let mut again = SseClient::connect(server.addr, &format!("slowpoke&lastEventId={resume}"));
    while got.len() < ids.len() {
        got.push(again.next_message().unwrap().id.unwrap().parse().unwrap());
    }
    assert_eq!(got, ids, "nothing lost, nothing twice");

    // A cursor older than a short history gets a reset, then what is left.
    let server = Server::start(&["--set", "history.max_events=10"]);
    let first = publish(server.addr, "short", "0");
    let rest: Vec<u64> = (1..50)
        .map(|n| publish(server.addr, "short", &n.to_string()))
        .collect();
    let mut c = SseClient::connect(server.addr, &format!("short&lastEventId={first}"));
    let reset = c.next_message().unwrap();
    assert_eq!(reset.event.as_deref(), Some("reset"));
    assert!(reset.id.is_none(), "a reset does not move the cursor");
    let replay: Vec<u64> = (0..10)
        .map(|_| c.next_message().unwrap().id.unwrap().parse().unwrap())
        .collect();
    assert_eq!(replay[..], rest[39..]);
    let mut ws = RawWs::connect(server.addr, "/ws", &[]);
    ws.send_text(&format!(
        r#"{{"type":"subscribe","channel":"short","since":"{first}"}}"#
    ));
    let texts: Vec<String> = (0..3).map(|_| ws.read_non_ping().unwrap().text()).collect();
    assert!(texts[0].contains("subscribed"), "{texts:?}");
    let reset: serde_json::Value = serde_json::from_str(&texts[1]).unwrap();
    assert_eq!(
        reset,
        serde_json::json!({"type": "reset", "channel": "short"})
    );
    assert!(
        texts[2].contains(&format!("\"id\":\"{}\"", rest[39])),
        "{texts:?}"
    );
}

#[test]
fn the_same_publish_id_delivers_once_and_again_after_the_window() {
    let server = Server::start(&["--set", "publish.dedupe_ttl_ms=300"]);
    let mut sub = SseClient::connect(server.addr, "once");
    let body = r#"{"channel":"once","data":"hi","id":"order-17"}"#;
    let (s1, b1) = request(server.addr, "POST", "/api/publish", &[], body);
    let (s2, b2) = request(server.addr, "POST", "/api/publish", &[], body);
    assert_eq!((s1, s2), (200, 200));
    let (v1, v2): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&b1).unwrap(),
        serde_json::from_str(&b2).unwrap(),
    );
    assert_eq!(
        (v1["duplicate"].as_bool(), v2["duplicate"].as_bool()),
        (Some(false), Some(true))
    );
    assert_eq!(v1["id"], v2["id"]);
    // After the window the same id publishes again.
    let mut third = serde_json::Value::Null;
    wait_until("dedupe window passes", || {
        let (_, b) = request(server.addr, "POST", "/api/publish", &[], body);
        third = serde_json::from_str(&b).unwrap();
        third["duplicate"] == false
    });
    let first = sub.next_message().unwrap();
    let second = sub.next_message().unwrap();
    assert_eq!(first.id.as_deref(), v1["id"].as_str());
    assert_eq!(
        second.id.as_deref(),
        third["id"].as_str(),
        "the duplicates never arrived"
    );
    assert!(server.metric("redix_publish_duplicates_total") >= 1.0);
}

#[test]
fn a_million_one_shot_channels_leave_hub_memory_bounded_after_the_sweep() {
    const CHANNELS_PUBLISHED: usize = 1_000_000;
    let server = Server::start(&[
        "--set",
        "history.max_age_ms=1000",
        "--set",
        "history.sweep_ms=200",
        "--set",
        "history.max_channels=50000",
    ]);
    // Pipelined: 1,000 publishes per write, responses read in bulk.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
    let mut max_channels = 0.0f64;
    for batch in 0..CHANNELS_PUBLISHED / 1000 {
        let mut out = Vec::with_capacity(1000 * 120);
        for k in 0..1000 {
            push_publish(&mut out, &format!("one-{batch}-{k}"), "1");
        }
        s.write_all(&out).unwrap();
        for _ in 0..1000 {
            read_json_response(&mut reader);
        }
        if batch % 100 == 0 {
            max_channels = max_channels.max(server.metric("redix_hub_channels"));
        }
    }
    assert!(max_channels <= 50_000.0, "channel cap held: {max_channels}");
    assert!(server.metric("redix_history_bytes") <= 50_000.0 * 1024.0);
    assert_eq!(
        server.metric("redix_published_total"),
        CHANNELS_PUBLISHED as f64
    );
    wait_until("sweep empties the hub", || {
        server.metric("redix_hub_channels") == 0.0 && server.metric("redix_history_events") == 0.0
    });
    assert_eq!(server.metric("redix_history_bytes"), 0.0);
}
