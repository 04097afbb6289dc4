//! Plain HTTP against the real server: bad input gets the right status and
//! never disturbs anything else; keep-alive and pipelining; auth.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;

fn error_code(text: &str) -> String {
    let body = text.split_once("\r\n\r\n").expect("body").1;
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("json body in {text:?}"));
    v["error"]["code"].as_str().expect("error.code").to_string()
}

#[test]
fn malformed_oversized_and_slow_requests_get_their_status_and_the_server_keeps_serving() {
    let server = Server::start(&["--set", "limits.header_timeout_ms=300"]);
    let mut sub = SseClient::connect(server.addr, "calm");
    assert_eq!(sub.status, 200);

    let garbage = raw_exchange(server.addr, b"\x16\x03\x01 nonsense\r\n\r\n");
    assert_eq!(status_of(&garbage), 400);
    assert_eq!(error_code(&garbage), "bad_request");

    let big_body = raw_exchange(
        server.addr,
        b"POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: 70000\r\n\r\n",
    );
    assert_eq!(status_of(&big_body), 413);

    let big_head = format!(
        "GET /healthz HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let text = raw_exchange(server.addr, big_head.as_bytes());
    assert_eq!(status_of(&text), 431);

    // Slowloris: half a request, then nothing.
    let text = raw_exchange(server.addr, b"GET /healthz HTTP/1.1\r\nHost:");
    assert_eq!(status_of(&text), 408);
    assert_eq!(error_code(&text), "request_timeout");

    let (status, body) = get(server.addr, "/nowhere");
    assert_eq!(
        (status, error_code(&format!("\r\n\r\n{body}")).as_str()),
        (404, "not_found")
    );
    let text = raw_exchange(
        server.addr,
        b"DELETE /api/publish HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(status_of(&text), 405);
    assert!(text.contains("Allow: POST"));
    let (status, _) = request(server.addr, "POST", "/api/publish", &[], "{not json");
    assert_eq!(status, 400);
    let (status, _) = request(
        server.addr,
        "POST",
        "/api/publish",
        &[],
        r#"{"channel":"a b","data":1}"#,
    );
    assert_eq!(status, 400);
    let (status, _) = get(server.addr, "/api/stream");
    assert_eq!(status, 400, "stream without channels");

    // Everything else went on: the subscriber still gets events.
    let id = publish(server.addr, "calm", r#"{"ok":true}"#);
    let ev = sub.next_message().unwrap();
    assert_eq!(ev.id, Some(id.to_string()));
    assert_eq!(get(server.addr, "/healthz").0, 200);
    let (status, body) = get(server.addr, "/readyz");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    assert!(server.metric("redix_connections_rejected_total{reason=\"bad_request\"}") >= 4.0);
}

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    // Two requests in one write, the second split across two writes.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHo")
        .unwrap();
    s.flush().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("HTTP/1.1 200 OK") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    s.write_all(b"st: t\r\nConnection: close\r\n\r\n").unwrap();
    s.read_to_end(&mut got).unwrap();
    let text = String::from_utf8(got).unwrap();
    let first = text.find("HTTP/1.1 200 OK").unwrap();
    let second = text.find("HTTP/1.1 404 Not Found").unwrap();
    assert!(first < second, "{text}");
    assert!(text.contains("Connection: close"));
}

#[test]
fn api_keys_guard_publish_and_admin() {
    let server = Server::start(&["--api-key", "s3cret"]);
    let body = r#"{"channel":"k","data":1}"#;
    let (status, _) = request(server.addr, "POST", "/api/publish", &[], body);
    assert_eq!(status, 401);
    let (status, _) = request(
        server.addr,
        "POST",
        "/api/publish",
        &["Authorization: Bearer wrong"],
        body,
    );
    assert_eq!(status, 401);
    let (status, _) = request(
        server.addr,
        "POST",
        "/api/publish",
        &["Authorization: Bearer s3cret"],
        body,
    );
    assert_eq!(status, 200);
    let (status, _) = request(server.addr, "GET", "/debug/fds", &[], "");
    assert_eq!(status, 401);
    let (status, _) = request(server.addr, "GET", "/debug/fds", &["X-API-Key: s3cret"], "");
    assert_eq!(status, 200);
    // The ready line goes to stdout, the log to stderr.
    let listening = format!("redix listening on {}\n", server.addr);
    assert!(server.stdout().contains(&listening), "{}", server.stdout());
    assert!(
        !server.logs().contains("redix listening"),
        "{}",
        server.logs()
    );
    // With a key configured there is no warning about having none. The
    // start-up summary is logged after the point where it would be.
    wait_until("the start-up summary in the log", || {
        server.logs().contains("reactors, connection cap")
    });
    assert!(
        !server.logs().contains("no API key configured"),
        "{}",
        server.logs()
    );
    // Without one, the same start warns (so the check above looks for the
    // right words).
    let open = Server::start(&[]);
    wait_until("the no-key warning", || {
        open.logs().contains("no API key configured")
    });
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redix"))
        .args(["--listen", "127.0.0.1:0", "--set", "queue.max_events=-3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_events"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_redix"))
        .env("REDIX_LIMITS_SSE_PER_IP", "many")
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sse_per_ip"));
}

#[test]
fn published_data_keeps_key_order_and_number_digits_but_is_compacted() {
    let server = Server::start(&[]);
    let mut sub = SseClient::connect(server.addr, "exact");
    let data = "{\n  \"s\": \"AAPL\",\n  \"p\": 189.20,\n  \"big\": 12345678901234567890123,\n  \"e\": 1e2,\n  \"a\": [1, \"two\"]\n}";
    let body = format!(r#"{{"channel":"exact","data":{data}}}"#);
    let (status, _) = request(server.addr, "POST", "/api/publish", &[], &body);
    assert_eq!(status, 200);
    let ev = sub.next_message().unwrap();
    assert!(
        ev.data.ends_with(r#""data":{"s":"AAPL","p":189.20,"big":12345678901234567890123,"e":1e+2,"a":[1,"two"]}}"#),
        "{}",
        ev.data
    );
}

#[test]
fn requests_over_the_per_ip_rate_get_429_unless_keyed_or_monitoring() {
    let server = Server::start(&[
        "--api-key",
        "k",
        "--set",
        "limits.requests_per_sec=1",
        "--set",
        "limits.request_burst=3",
        "--set",
        r#"limits.trusted_proxies=["127.0.0.1"]"#,
    ]);
    // Through a trusted proxy the client is 203.0.113.5, not loopback.
    let remote = "X-Forwarded-For: 203.0.113.5";
    let statuses: Vec<u16> = (0..4)
        .map(|_| request(server.addr, "GET", "/nowhere", &[remote], "").0)
        .collect();
    assert_eq!(statuses, vec![404, 404, 404, 429]);
    let text = raw_exchange(
        server.addr,
        b"GET /nowhere HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.5\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&text), 429);
    assert!(
        text.contains("Retry-After: 1\r\n") && text.contains("rate_limited"),
        "{text}"
    );
    // Another client, a keyed publisher, monitoring: not affected.
    assert_eq!(
        request(
            server.addr,
            "GET",
            "/nowhere",
            &["X-Forwarded-For: 203.0.113.6"],
            ""
        )
        .0,
        404
    );
    let keyed = [remote, "Authorization: Bearer k"];
    let body = r#"{"channel":"r","data":1}"#;
    assert!((0..5).all(|_| request(server.addr, "POST", "/api/publish", &keyed, body).0 == 200));
    assert_eq!(
        request(server.addr, "GET", "/healthz", &[remote], "").0,
        200
    );
    assert!(server.metric("redix_connections_rejected_total{reason=\"rate_limit\"}") >= 2.0);
}
