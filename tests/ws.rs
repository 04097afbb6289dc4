//! WebSocket transport against the real server, with real clients:
//! tungstenite (Rust), Python `websockets`, and a raw client for frames no
//! library would send.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use common::*;
use tungstenite::{Message, WebSocket};

type Client = WebSocket<TcpStream>;

fn tungstenite_client(addr: SocketAddr) -> Client {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://{addr}/ws"), stream).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// The next text message as JSON (pings are answered by tungstenite).
fn next_json(ws: &mut Client) -> serde_json::Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("json"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn send(ws: &mut Client, json: &str) {
    ws.send(Message::text(json)).expect("send");
}

#[test]
fn subscribe_publish_message_and_the_json_protocol() {
    // trades:AAPL as an ordinary channel: no market feed.
    let server = Server::start(&[
        "--set",
        "ws.max_subscriptions=3",
        "--set",
        "market.simulator=false",
    ]);
    let mut ws = tungstenite_client(server.addr);
    send(&mut ws, r#"{"type":"subscribe","channel":"news"}"#);
    assert_eq!(
        next_json(&mut ws),
        serde_json::json!({"type":"subscribed","channel":"news"})
    );
    send(&mut ws, r#"{"type":"subscribe","symbol":"AAPL"}"#);
    assert_eq!(next_json(&mut ws)["channel"], "trades:AAPL");

    let id = publish(server.addr, "news", r#"{"hello":1}"#);
    let msg = next_json(&mut ws);
    assert_eq!(
        msg,
        serde_json::json!({"type":"message","channel":"news","id":id.to_string(),"data":{"hello":1}})
    );
    let id = publish(server.addr, "trades:AAPL", r#"{"p":1.5}"#);
    assert_eq!(next_json(&mut ws)["id"], id.to_string());

    send(&mut ws, r#"{"type":"ping"}"#);
    assert_eq!(next_json(&mut ws), serde_json::json!({"type":"pong"}));
    send(&mut ws, r#"{"type":"dance"}"#);
    assert_eq!(next_json(&mut ws)["code"], "unknown_type");
    send(&mut ws, "{nope");
    assert_eq!(next_json(&mut ws)["code"], "bad_json");
    send(&mut ws, r#"{"type":"subscribe","channel":"bad channel"}"#);
    assert_eq!(next_json(&mut ws)["code"], "bad_request");
    send(&mut ws, r#"{"type":"subscribe","channel":"c3"}"#);
    assert_eq!(next_json(&mut ws)["type"], "subscribed");
    send(&mut ws, r#"{"type":"subscribe","channel":"c4"}"#);
    let err = next_json(&mut ws);
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("too_many_subscriptions"))
    );
    send(&mut ws, r#"{"type":"unsubscribe","channel":"news"}"#);
    assert_eq!(next_json(&mut ws)["type"], "unsubscribed");
    send(&mut ws, r#"{"type":"unsubscribe","channel":"news"}"#);
    assert_eq!(next_json(&mut ws)["code"], "not_subscribed");
    // Unsubscribed: the next news event does not arrive, the c3 one does.
    publish(server.addr, "news", "1");
    let id = publish(server.addr, "c3", "2");
    assert_eq!(next_json(&mut ws)["id"], id.to_string());
}

#[test]
fn the_fifty_first_websocket_from_one_ip_gets_429_before_the_upgrade() {
    let server = Server::start(&[]);
    let held: Vec<RawWs> = (0..50)
        .map(|_| RawWs::connect(server.addr, "/ws", &[]))
        .collect();
    assert!(held.iter().all(|w| w.status == 101));
    let refused = RawWs::connect(server.addr, "/ws", &[]);
    assert_eq!(refused.status, 429);
    assert!(refused.head.contains("Retry-After: "));
    drop(held);
    wait_until("slots back", || {
        server.metric("redix_ip_limiter_clients") == 0.0
    });
    assert_eq!(RawWs::connect(server.addr, "/ws", &[]).status, 101);
}

#[test]
fn bad_upgrades_are_refused_with_the_right_status() {
    let server = Server::start(&["--set", r#"ws.allowed_origins=["https://ok.example"]"#]);
    let text = raw_exchange(
        server.addr,
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: https://ok.example\r\n\r\n",
    );
    assert_eq!(status_of(&text), 426);
    assert!(text.contains("Sec-WebSocket-Version: 13"));
    let text = raw_exchange(
        server.addr,
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\nOrigin: https://ok.example\r\n\r\n",
    );
    assert_eq!(status_of(&text), 400);
    assert_eq!(
        RawWs::connect(server.addr, "/ws", &["Origin: https://evil.example"]).status,
        403
    );
    let ok = RawWs::connect(server.addr, "/ws", &["Origin: https://ok.example"]);
    assert_eq!(ok.status, 101);
    assert!(ok
        .head
        .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert_eq!(
        RawWs::connect(server.addr, "/ws/echo", &[]).status,
        404,
        "echo is off by default"
    );
}

#[test]
fn protocol_violations_close_with_their_code_and_nothing_else_notices() {
    let server = Server::start(&[]);
    let mut bystander = RawWs::connect(server.addr, "/ws", &[]);
    ws_subscribe(&mut bystander, "calm");

    let cases: [(&str, u8, Vec<u8>, bool, u16); 5] = [
        ("unmasked frame", 0x81, b"{}".to_vec(), false, 1002),
        ("reserved opcode", 0x83, vec![], true, 1002),
        ("RSV1 without deflate", 0xc1, b"x".to_vec(), true, 1002),
        ("bad UTF-8", 0x81, vec![0xce, 0xba, 0xff, 0xfe], true, 1007),
        ("message over 64 KiB", 0x82, vec![0; 70_000], true, 1009),
    ];
    for (what, first, payload, mask, code) in cases {
        let mut ws = RawWs::connect(server.addr, "/ws", &[]);
        assert_eq!(ws.status, 101);
        ws.send_frame(first, &payload, mask);
        let close = ws
            .read_non_ping()
            .unwrap_or_else(|| panic!("{what}: no close frame"));
        assert_eq!(close.close_code().0, code, "{what}");
        assert!(
            ws.read_frame().is_none(),
            "{what}: connection closed after the close frame"
        );
    }
    // A fragmented text message whose second fragment breaks UTF-8 fails
    // at that fragment, before the message ends.
    let mut ws = RawWs::connect(server.addr, "/ws", &[]);
    ws.send_frame(0x01, "{\"type\":".as_bytes(), true);
    ws.send_frame(0x00, &[0xf0, 0x28, 0x8c, 0x28], true);
    assert_eq!(ws.read_non_ping().unwrap().close_code().0, 1007);
    // The client's own close is echoed.
    let mut ws = RawWs::connect(server.addr, "/ws", &[]);
    ws.send_frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e'], true);
    assert_eq!(ws.read_non_ping().unwrap().close_code().0, 1000);

    let id = publish(server.addr, "calm", "1");
    let msg = bystander.read_non_ping().unwrap();
    let v: serde_json::Value = serde_json::from_str(&msg.text()).unwrap();
    assert_eq!(v["id"], id.to_string());
    assert!(server.metric("redix_ws_protocol_errors_total") >= 6.0);
}

#[test]
fn a_client_that_never_answers_pings_is_closed_and_a_live_one_is_not() {
    let server = Server::start(&["--set", "ws.ping_ms=100", "--set", "ws.idle_timeout_ms=400"]);
    let mut silent = RawWs::connect(server.addr, "/ws", &[]);
    let mut live = tungstenite_client(server.addr);
    send(&mut live, r#"{"type":"subscribe","channel":"alive"}"#);
    assert_eq!(next_json(&mut live)["type"], "subscribed");
    let reader = std::thread::spawn(move || next_json(&mut live));
    // The silent client sees pings, then a close for idleness.
    let mut pings = 0;
    let close = loop {
        let f = silent.read_frame().expect("frames until close");
        match f.opcode {
            9 => pings += 1,
            8 => break f,
            other => panic!("unexpected opcode {other}"),
        }
    };
    assert!(pings >= 2, "pinged before closing ({pings})");
    assert_eq!(close.close_code(), (1001, "idle timeout".into()));
    // The live client answered every ping and outlived the silent one.
    let id = publish(server.addr, "alive", "1");
    assert_eq!(reader.join().unwrap()["id"], id.to_string());
}

#[test]
fn deflate_and_plain_clients_share_one_compressed_frame() {
    assert!(
        python_websockets(),
        "python3 -m pip install websockets (the test command does this)"
    );
    let server = Server::start(&[]);
    let script = r#"
import json, sys
from websockets.sync.client import connect
with connect(sys.argv[1], compression="deflate", open_timeout=20) as ws:
    print(ws.response.headers.get("Sec-WebSocket-Extensions"), flush=True)
    ws.send(json.dumps({"type": "subscribe", "channel": "big"}))
    print(ws.recv(timeout=20), flush=True)
    print(ws.recv(timeout=20), flush=True)
"#;
    let pythons: Vec<_> = (0..2)
        .map(|_| {
            let mut child = Command::new("python3")
                .args(["-c", script, &format!("ws://{}/ws", server.addr)])
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3");
            let mut out = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert!(
                line.contains("permessage-deflate") && line.contains("server_no_context_takeover"),
                "{line}"
            );
            line.clear();
            out.read_line(&mut line).unwrap();
            assert!(line.contains("subscribed"), "{line}");
            (child, out)
        })
        .collect();
    let mut plain = RawWs::connect(server.addr, "/ws", &[]);
    ws_subscribe(&mut plain, "big");
    let data = format!(r#"{{"text":"{}"}}"#, "redix ".repeat(200));
    let id = publish(server.addr, "big", &data);
    let frame = plain.read_non_ping().unwrap();
    assert!(!frame.rsv1, "the plain client gets an uncompressed frame");
    let v: serde_json::Value = serde_json::from_str(&frame.text()).unwrap();
    assert_eq!(v["id"], id.to_string());
    for (mut child, mut out) in pythons {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).expect("python got the message");
        assert_eq!(v["id"], id.to_string());
        assert_eq!(v["data"]["text"].as_str().unwrap().len(), 1200);
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(
        server.metric("redix_ws_compressions_total"),
        1.0,
        "compressed once for both"
    );
}

#[test]
fn a_thousand_websockets_that_leave_return_fds_to_baseline() {
    // Each subscriber finds "fd" gone with the one before: without the
    // budget of new channels, which would count 500 of them.
    let server = Server::start(&[
        "--set",
        "limits.ws_per_ip=2000",
        "--set",
        "limits.new_channels_per_min=0",
    ]);
    let baseline = server.fd_count();
    for _ in 0..10 {
        let batch: Vec<RawWs> = (0..100)
            .map(|_| RawWs::connect(server.addr, "/ws", &[]))
            .collect();
        assert!(batch.iter().all(|w| w.status == 101));
        for (i, mut ws) in batch.into_iter().enumerate() {
            // Half leave with RST, the others with a close frame or a FIN.
            match i % 4 {
                0 => ws.abort(),
                1 => ws.send_frame(0x88, &[0x03, 0xe8], true),
                2 => {
                    ws_subscribe(&mut ws, "fd");
                    ws.abort();
                }
                _ => ws_subscribe(&mut ws, "fd"),
            }
        }
    }
    wait_until("fds back at baseline", || server.fd_count() == baseline);
    wait_until("no websockets", || {
        server.metric("redix_connections{transport=\"ws\"}") == 0.0
    });
    assert_eq!(
        server.metric("redix_hub_channels"),
        0.0,
        "subscriptions released"
    );
}

#[test]
fn a_stalled_websocket_is_closed_with_4008_and_its_resume_id() {
    let server = Server::start(&[
        "--set",
        "queue.max_events=50",
        "--set",
        "tcp.send_buffer=4096",
        "--set",
        "shutdown.linger_ms=15000",
    ]);
    let mut slow = RawWs::connect_small(server.addr, "/ws");
    ws_subscribe(&mut slow, "flood");
    let pad = "y".repeat(1000);
    let mut publisher = Publisher::connect(server.addr);
    let mut ids = Vec::new();
    while server.metric("redix_slow_disconnects_total") < 1.0 {
        ids.push(publisher.publish("flood", &format!(r#""{pad}""#)));
        assert!(ids.len() < 5000, "never disconnected");
    }
    let mut got = Vec::new();
    let close = loop {
        let f = slow.read_non_ping().expect("frames then close");
        if f.opcode == 8 {
            break f;
        }
        let v: serde_json::Value = serde_json::from_str(&f.text()).unwrap();
        got.push(v["id"].as_str().unwrap().parse::<u64>().unwrap());
    };
    assert_eq!(got[..], ids[..got.len()], "a prefix, in order");
    let (code, reason) = close.close_code();
    assert_eq!(code, 4008);
    assert_eq!(reason, got.last().unwrap().to_string());
}

#[test]
fn frames_sent_in_the_same_write_as_the_upgrade_are_not_lost() {
    use std::io::{Read, Write};
    let server = Server::start(&[]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut bytes = b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    let cmd = br#"{"type":"ping"}"#;
    let key = [1u8, 2, 3, 4];
    bytes.extend_from_slice(&[0x81, 0x80 | cmd.len() as u8]);
    bytes.extend_from_slice(&key);
    bytes.extend(cmd.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    s.write_all(&bytes).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains(r#"{"type":"pong"}"#) {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"));
}
