//! Delivery guarantees against the real server: lossless resume over
//! several channels under churn, slow-consumer resume, resets, idempotent
//! publish, and hub memory bounded by the sweep.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::*;

const CHANNELS: [&str; 3] = ["c0", "c1", "c2"];

/// The channels client `i` listens to: one, two or all three.
fn channels_of(i: usize) -> Vec<&'static str> {
    match i % 3 {
        0 => vec![CHANNELS[i % 3]],
        1 => vec!["c0", "c2"],
        _ => CHANNELS.to_vec(),
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
                0 => churning_sse(&[addr], i, &channels_of(i)),
                _ => churning_ws(&[addr], i, &channels_of(i)),
            })
        })
        .collect();
    // A steady stream: one publish at a time, each answered before the next.
    let mut published: Vec<(String, String)> = Vec::with_capacity(EVENTS);
    let mut publisher = Publisher::connect(addr);
    for n in 0..EVENTS {
        let ch = CHANNELS[n % 3];
        let id = publisher.publish_id(ch, &format!(r#"{{"n":{n}}}"#));
        published.push((ch.to_string(), id));
    }
    for ch in CHANNELS {
        let id = publisher.publish_id(ch, r#"{"end":true}"#);
        published.push((ch.to_string(), id));
    }
    for (i, handle) in clients.into_iter().enumerate() {
        let got = handle
            .join()
            .unwrap_or_else(|_| panic!("client {i} failed"));
        check_churned(i, &channels_of(i), &got, &published, i % 2 == 0);
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
