//! Batching against the real server: WebSocket batch frames only for
//! clients that ask, built and compressed once per window; SSE windows
//! written in few syscalls.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::*;

/// Publishes `n` events to `channel` in one pipelined write; returns their ids.
fn burst(addr: SocketAddr, channel: &str, n: usize, data: &str) -> Vec<u64> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        push_publish(&mut out, channel, data);
    }
    s.write_all(&out).unwrap();
    let mut r = BufReader::new(s);
    (0..n)
        .map(|_| {
            read_json_response(&mut r)["id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

/// Inflates a permessage-deflate payload (RFC 7692 §7.2.2).
fn inflate(payload: &[u8]) -> String {
    let mut data = payload.to_vec();
    data.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = String::new();
    let _ = flate2::read::DeflateDecoder::new(&data[..]).read_to_string(&mut out);
    out
}

/// Reads frames until `n` events arrived; returns (ids, frames that carried them).
fn read_events(ws: &mut RawWs, n: usize) -> (Vec<u64>, Vec<String>) {
    let (mut ids, mut kinds) = (Vec::new(), Vec::new());
    while ids.len() < n {
        let f = ws.read_non_ping().expect("frame");
        let text = if f.rsv1 {
            inflate(&f.payload)
        } else {
            f.text()
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let kind = v["type"].as_str().unwrap().to_string();
        match kind.as_str() {
            "batch" => ids.extend(
                v["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["id"].as_str().unwrap().parse::<u64>().unwrap()),
            ),
            "message" => ids.push(v["id"].as_str().unwrap().parse().unwrap()),
            _ => continue,
        }
        kinds.push(kind);
    }
    (ids, kinds)
}

#[test]
fn websocket_batches_only_for_clients_that_ask() {
    let server = Server::start(&["--set", "batch.window_ms=50"]);
    let mut batched = RawWs::connect(server.addr, "/ws?batch=1", &[]);
    let mut plain = RawWs::connect(server.addr, "/ws", &[]);
    ws_subscribe(&mut batched, "b");
    ws_subscribe(&mut plain, "b");
    let ids = burst(server.addr, "b", 30, r#"{"x":1}"#);
    let (got, kinds) = read_events(&mut batched, 30);
    assert_eq!(got, ids, "every event once, in order");
    assert!(kinds.iter().all(|k| k == "batch"), "{kinds:?}");
    assert!(kinds.len() < 10, "30 events in {} frames", kinds.len());
    let (got, kinds) = read_events(&mut plain, 30);
    assert_eq!(got, ids);
    assert!(
        kinds.iter().all(|k| k == "message"),
        "no batch frames unless asked for"
    );
}

#[test]
fn a_deflated_batch_is_compressed_once_for_all_its_subscribers() {
    let server = Server::start(&["--set", "batch.window_ms=50"]);
    let offer = ["Sec-WebSocket-Extensions: permessage-deflate"];
    let mut clients: Vec<RawWs> = (0..6)
        .map(|_| RawWs::connect(server.addr, "/ws?batch=1", &offer))
        .collect();
    for c in clients.iter_mut() {
        assert!(c.head.contains("permessage-deflate"), "{}", c.head);
        ws_subscribe(c, "big");
    }
    let data = format!(r#""{}""#, "compressible ".repeat(30));
    let ids = burst(server.addr, "big", 10, &data);
    for c in clients.iter_mut() {
        assert_eq!(read_events(c, 10).0, ids);
    }
    let compressions = server.metric("redix_ws_compressions_total");
    assert!(
        (1.0..6.0).contains(&compressions),
        "shared, not per subscriber: {compressions}"
    );
}

#[test]
fn an_sse_batch_window_goes_out_in_few_writes() {
    let server = Server::start(&["--set", "batch.window_ms=50"]);
    let mut c = SseClient::connect(server.addr, "sb&batch=1");
    assert_eq!(c.status, 200);
    wait_until("stream open", || {
        server.metric("redix_connections{transport=\"sse\"}") == 1.0
    });
    let before = server.metric("redix_write_calls_total");
    let ids = burst(server.addr, "sb", 50, "1");
    let got: Vec<u64> = (0..50)
        .map(|_| c.next_message().unwrap().id.unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, ids);
    let writes = server.metric("redix_write_calls_total") - before;
    // The publisher's answers and this scrape's write are in there too.
    assert!(writes <= 10.0, "50 events took {writes} writes");
}

/// Finding 8 of the hardening review: a window whose events add up to
/// more than a subscriber's queue (`queue.max_bytes`) used to become one
/// frame too big to queue, dropped for every batching client, fast
/// readers included. The window now goes out in frames that fit.
#[test]
fn a_window_bigger_than_the_queue_reaches_a_fast_batching_reader_whole() {
    let server = Server::start(&[
        "--set",
        "batch.window_ms=500",
        "--set",
        "queue.max_bytes=65536",
        "--set",
        "limits.max_body_bytes=8192",
    ]);
    let mut ws = RawWs::connect(server.addr, "/ws?batch=1", &[]);
    ws_subscribe(&mut ws, "wide");
    let mut publisher = Publisher::connect(server.addr);
    let data = format!(r#""{}""#, "x".repeat(6000));
    // 20 × 6 KB inside one window: 120 KB, twice the queue.
    let ids: Vec<u64> = (0..20).map(|_| publisher.publish("wide", &data)).collect();
    let (got, kinds) = read_events(&mut ws, 20);
    assert_eq!(got, ids, "every event once, in order");
    assert!(kinds.iter().all(|k| k == "batch"), "{kinds:?}");
    assert_eq!(
        server.metric("redix_events_dropped_total{reason=\"queue_full\"}"),
        0.0
    );
}
