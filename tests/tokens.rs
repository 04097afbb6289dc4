//! Subscription tokens against the real server, one test per rule: a
//! valid token streams its channels and no others, an expired, forged or
//! unsigned (`alg: none`) one is refused, expiry ends a live stream with a
//! signal the client acts on (and a fresh token resumes with nothing
//! lost), a WebSocket refreshes its token in place, secrets rotate through
//! SIGHUP, a subject holds at most its cap of connections, and the
//! `Origin` allowlist covers SSE as well as WebSocket. Tokens are minted
//! with the crate redix verifies them with.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use common::*;

const SECRET: &str = "test-secret-0123456789-abcdefghij";
const NEW_SECRET: &str = "rotated-secret-9876543210-zyxwvuts";

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `sub` over `channels`, valid until `exp`.
fn mint_with(secret: &str, sub: &str, channels: &[&str], exp: u64) -> String {
    let claims = json!({"sub": sub, "exp": exp, "iat": now_s(), "channels": channels});
    let key = EncodingKey::from_secret(secret.as_bytes());
    encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
}

/// A token for `sub` over `channels`, valid for a minute.
fn mint(sub: &str, channels: &[&str]) -> String {
    mint_with(SECRET, sub, channels, now_s() + 60)
}

/// A token mode server (no leeway, so expiry is exact) plus `extra`.
fn token_server(extra: &[&str]) -> Server {
    let secrets = format!(r#"auth.token_secrets=["{SECRET}"]"#);
    let mut args = vec![
        "--set",
        "auth.subscribe=token",
        "--set",
        &secrets,
        "--set",
        "auth.token_leeway_ms=0",
        // trades:* as ordinary channels, published by the test.
        "--set",
        "market.simulator=false",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Opens an SSE stream; for a refusal, also its error code and message.
fn open_sse(server: &Server, path: &str, headers: &[&str]) -> (SseClient, Value) {
    let mut sse = SseClient::open(server.addr, path, headers);
    let mut error = Value::Null;
    if sse.status != 200 {
        // A refusal keeps the connection alive: read its body by length.
        let len = sse
            .head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|n| n.trim().parse().ok())
            .expect("a Content-Length");
        let mut body = vec![0; len];
        std::io::Read::read_exact(&mut sse.reader, &mut body).expect("the body");
        error = serde_json::from_slice::<Value>(&body).expect("json error body")["error"].clone();
    }
    (sse, error)
}

fn stream_path(channels: &str, token: &str) -> String {
    format!("/api/stream?channels={channels}&token={token}")
}

fn json_of(frame: &RawFrame) -> Value {
    serde_json::from_str(&frame.text()).expect("json frame")
}

/// The next JSON text frame (pings and pongs skipped).
fn next_json(ws: &mut RawWs) -> Value {
    loop {
        let f = ws.read_non_ping().expect("a frame");
        if f.opcode == 1 {
            return json_of(&f);
        }
        assert_ne!(f.opcode, 8, "closed: {:?}", f.close_code());
    }
}

/// Reads until the server's close frame; its code and reason.
fn close_of(ws: &mut RawWs) -> (u16, String) {
    loop {
        let f = ws.read_non_ping().expect("a close frame");
        if f.opcode == 8 {
            return f.close_code();
        }
    }
}

#[test]
fn sse_needs_a_valid_signed_unexpired_token_for_every_channel() {
    let server = token_server(&[]);
    let news = mint("alice", &["news", "trades:*"]);

    let (sse, err) = open_sse(&server, "/api/stream?channels=news", &[]);
    assert_eq!(
        (sse.status, err["code"].as_str()),
        (401, Some("token_required"))
    );
    assert!(
        sse.head.contains("WWW-Authenticate: Bearer"),
        "{}",
        sse.head
    );

    // Valid, by query and by header, for an exact name and a prefix.
    let (mut ok, _) = open_sse(&server, &stream_path("news,trades:AAPL", &news), &[]);
    assert_eq!(ok.status, 200);
    let bearer = format!("Authorization: Bearer {news}");
    let (mut by_header, _) = open_sse(&server, "/api/stream?channels=news", &[&bearer]);
    assert_eq!(by_header.status, 200);
    let id = publish(server.addr, "trades:AAPL", "1");
    assert_eq!(ok.next_message().unwrap().id, Some(id.to_string()));
    let id = publish(server.addr, "news", "2");
    assert_eq!(ok.next_message().unwrap().id, Some(id.to_string()));
    assert_eq!(by_header.next_message().unwrap().id, Some(id.to_string()));

    let refusals = [
        (
            "wrong channel",
            stream_path("news,sports", &news),
            403,
            "channel_not_allowed",
            "sports",
        ),
        (
            "expired",
            stream_path("news", &mint_with(SECRET, "alice", &["news"], now_s() - 1)),
            401,
            "bad_token",
            "expired",
        ),
        (
            "wrong signature",
            stream_path(
                "news",
                &mint_with(NEW_SECRET, "alice", &["news"], now_s() + 60),
            ),
            401,
            "bad_token",
            "signature",
        ),
        (
            "alg none",
            stream_path("news", &unsigned("alice", &["news"])),
            401,
            "bad_token",
            "HS256",
        ),
        (
            "garbage",
            stream_path("news", "abc.def.ghi"),
            401,
            "bad_token",
            "token",
        ),
    ];
    for (what, path, status, code, says) in refusals {
        let (sse, err) = open_sse(&server, &path, &[]);
        assert_eq!(
            (sse.status, err["code"].as_str()),
            (status, Some(code)),
            "{what}"
        );
        let message = err["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{what}: {message}");
    }
    let rejected = |reason: &str| {
        server.metric(&format!(
            r#"redix_connections_rejected_total{{reason="{reason}"}}"#
        ))
    };
    assert_eq!(rejected("token"), 5.0);
    assert_eq!(rejected("channel_not_allowed"), 1.0);
}

/// `alg: none` written by hand, as an attacker would: no signature.
fn unsigned(sub: &str, channels: &[&str]) -> String {
    let part = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = json!({"sub": sub, "exp": now_s() + 60, "channels": channels});
    format!(
        "{}.{}.",
        part(json!({"alg": "none", "typ": "JWT"})),
        part(claims)
    )
}

#[test]
fn an_api_key_is_no_subscription_token_and_job_streams_need_none() {
    let server = token_server(&["--api-key", "the-publisher-key"]);
    let (sse, err) = open_sse(
        &server,
        "/api/stream?channels=news",
        &["Authorization: Bearer the-publisher-key"],
    );
    assert_eq!((sse.status, err["code"].as_str()), (401, Some("bad_token")));
    // A job stream names its job by an unguessable id: no token needed
    // (an unknown job is 404, not 401).
    let (status, body) = request(server.addr, "GET", "/api/ask?job=nosuchjob", &[], "");
    assert_eq!(status, 404, "{body}");
}

#[test]
fn websocket_subscribes_are_checked_against_the_token() {
    let server = token_server(&[]);
    assert_eq!(RawWs::connect(server.addr, "/ws", &[]).status, 401);
    let forged = mint_with(NEW_SECRET, "alice", &["news"], now_s() + 60);
    let path = format!("/ws?token={forged}");
    assert_eq!(RawWs::connect(server.addr, &path, &[]).status, 401);
    let none = format!("/ws?token={}", unsigned("alice", &["news"]));
    assert_eq!(RawWs::connect(server.addr, &none, &[]).status, 401);

    let path = format!("/ws?token={}", mint("alice", &["news", "trades:*"]));
    let mut ws = RawWs::connect(server.addr, &path, &[]);
    assert_eq!(ws.status, 101);
    ws_subscribe(&mut ws, "news");
    ws_subscribe(&mut ws, "trades:MSFT");
    ws.send_text(r#"{"type":"subscribe","channel":"sports"}"#);
    let err = next_json(&mut ws);
    assert_eq!(err["code"], "channel_not_allowed", "{err}");
    assert!(err["message"].as_str().unwrap().contains("sports"), "{err}");
    // An error frame, not a close: the connection goes on.
    let id = publish(server.addr, "news", "1");
    assert_eq!(next_json(&mut ws)["id"], id.to_string());
    publish(server.addr, "sports", r#""nobody here may see this""#);
    let id = publish(server.addr, "trades:MSFT", "2");
    assert_eq!(next_json(&mut ws)["id"], id.to_string());
}

#[test]
fn an_expired_sse_stream_ends_with_token_expired_and_a_fresh_token_resumes_it() {
    let server = token_server(&[]);
    let short = mint_with(SECRET, "alice", &["news"], now_s() + 3);
    let (mut sse, _) = open_sse(&server, &stream_path("news", &short), &[]);
    assert_eq!(sse.status, 200);
    let seen: Vec<u64> = (0..3)
        .map(|i| publish(server.addr, "news", &i.to_string()))
        .collect();
    for id in &seen {
        assert_eq!(sse.next_message().unwrap().id, Some(id.to_string()));
    }
    let end = sse.next_message().expect("the end of the stream");
    assert_eq!(end.event.as_deref(), Some("token_expired"), "{end:?}");
    let last = seen[2].to_string();
    assert_eq!(
        end.id.as_deref(),
        Some(last.as_str()),
        "EventSource keeps the cursor"
    );
    let data: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(
        data,
        json!({"reason": "token_expired", "lastEventId": last})
    );
    assert!(sse.next_event().is_none(), "the stream is over");
    assert_eq!(server.metric("redix_token_expiries_total"), 1.0);

    // The old token no longer opens anything; while the client gets a
    // fresh one, events go on.
    let (refused, err) = open_sse(&server, &stream_path("news", &short), &[]);
    assert_eq!(refused.status, 401);
    assert!(
        err["message"].as_str().unwrap().contains("expired"),
        "{err}"
    );
    let missed: Vec<u64> = (3..5)
        .map(|i| publish(server.addr, "news", &i.to_string()))
        .collect();
    let path = format!(
        "{}&lastEventId={last}",
        stream_path("news", &mint("alice", &["news"]))
    );
    let (mut again, _) = open_sse(&server, &path, &[]);
    assert_eq!(again.status, 200);
    for id in &missed {
        assert_eq!(again.next_message().unwrap().id, Some(id.to_string()));
    }
    let live = publish(server.addr, "news", "5");
    assert_eq!(again.next_message().unwrap().id, Some(live.to_string()));
}

#[test]
fn an_expired_websocket_closes_4001_and_resubscribing_with_since_loses_nothing() {
    let server = token_server(&[]);
    let short = mint_with(SECRET, "alice", &["news"], now_s() + 3);
    let mut ws = RawWs::connect(server.addr, &format!("/ws?token={short}"), &[]);
    assert_eq!(ws.status, 101);
    ws_subscribe(&mut ws, "news");
    let seen = publish(server.addr, "news", "1");
    assert_eq!(next_json(&mut ws)["id"], seen.to_string());
    assert_eq!(close_of(&mut ws), (4001, "token expired".to_string()));
    let missed = publish(server.addr, "news", "2");

    let bearer = format!("Authorization: Bearer {}", mint("alice", &["news"]));
    let mut ws = RawWs::connect(server.addr, "/ws", &[&bearer]);
    assert_eq!(ws.status, 101);
    ws.send_text(&format!(
        r#"{{"type":"subscribe","channel":"news","since":"{seen}"}}"#
    ));
    assert_eq!(next_json(&mut ws)["type"], "subscribed");
    assert_eq!(next_json(&mut ws)["id"], missed.to_string());
}

#[test]
fn a_websocket_refreshes_its_token_in_place_and_outlives_the_first() {
    let server = token_server(&[]);
    let first = mint_with(SECRET, "alice", &["news", "sports"], now_s() + 4);
    let mut ws = RawWs::connect(server.addr, &format!("/ws?token={first}"), &[]);
    assert_eq!(ws.status, 101);
    ws_subscribe(&mut ws, "news");
    ws_subscribe(&mut ws, "sports");
    // A witness whose token outlasts the first by a second: once it is
    // closed, the first token has surely expired.
    let witness_token = mint_with(SECRET, "alice", &["news"], now_s() + 5);
    let mut witness = RawWs::connect(server.addr, &format!("/ws?token={witness_token}"), &[]);
    assert_eq!(witness.status, 101);

    let auth = |token: &str| format!(r#"{{"type":"auth","token":"{token}"}}"#);
    ws.send_text(&auth(&mint_with(SECRET, "bob", &["news"], now_s() + 60)));
    let err = next_json(&mut ws);
    assert_eq!(err["code"], "bad_token", "another subject: {err}");
    ws.send_text(&auth(&mint_with(SECRET, "alice", &["news"], now_s() - 1)));
    assert_eq!(next_json(&mut ws)["code"], "bad_token", "expired");

    let exp = now_s() + 60;
    ws.send_text(&auth(&mint_with(SECRET, "alice", &["news"], exp)));
    assert_eq!(
        next_json(&mut ws),
        json!({"type": "authorized", "exp": exp})
    );
    assert_eq!(
        next_json(&mut ws),
        json!({"type": "unsubscribed", "channel": "sports", "reason": "channel_not_allowed"}),
        "the new token no longer allows sports"
    );
    ws.send_text(r#"{"type":"subscribe","channel":"sports"}"#);
    assert_eq!(next_json(&mut ws)["code"], "channel_not_allowed");

    assert_eq!(close_of(&mut witness), (4001, "token expired".to_string()));
    let id = publish(server.addr, "news", r#""after the first token's exp""#);
    assert_eq!(next_json(&mut ws)["id"], id.to_string());
    ws.send_text(r#"{"type":"ping"}"#);
    assert_eq!(next_json(&mut ws)["type"], "pong");
}

#[test]
fn secrets_rotate_through_sighup() {
    let dir = std::env::temp_dir().join(format!("redix-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("redix.toml");
    let config = |secrets: &[&str]| {
        let list: Vec<String> = secrets.iter().map(|s| format!("{s:?}")).collect();
        let text = format!(
            "[auth]\nsubscribe = \"token\"\ntoken_secrets = [{}]\n",
            list.join(", ")
        );
        std::fs::write(&path, text).unwrap();
    };
    let status = |server: &Server, secret: &str| {
        let token = mint_with(secret, "alice", &["news"], now_s() + 60);
        open_sse(server, &stream_path("news", &token), &[]).0.status
    };
    config(&[SECRET]);
    let server = Server::start(&["--config", path.to_str().unwrap()]);
    assert_eq!(status(&server, SECRET), 200);
    assert_eq!(status(&server, NEW_SECRET), 401);

    // The new secret first (it signs from now on), the old one still
    // verifying what it signed.
    config(&[NEW_SECRET, SECRET]);
    server.signal(libc::SIGHUP);
    wait_until("the reload", || server.logs().contains("2 token secrets"));
    assert_eq!(status(&server, NEW_SECRET), 200);
    assert_eq!(status(&server, SECRET), 200);
    assert!(!server.logs().contains(SECRET), "secrets are never logged");

    config(&[NEW_SECRET]);
    server.signal(libc::SIGHUP);
    wait_until("the second reload", || {
        server.logs().contains("1 token secrets")
    });
    assert_eq!(status(&server, NEW_SECRET), 200);
    assert_eq!(
        status(&server, SECRET),
        401,
        "the retired secret signs nothing"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_subject_holds_at_most_its_cap_of_streams_and_websockets() {
    let server = token_server(&["--set", "auth.max_conns_per_subject=2"]);
    let alice = mint("alice", &["news"]);
    let (first, _) = open_sse(&server, &stream_path("news", &alice), &[]);
    assert_eq!(first.status, 200);
    let ws = RawWs::connect(server.addr, &format!("/ws?token={alice}"), &[]);
    assert_eq!(ws.status, 101);

    let (sse, err) = open_sse(&server, &stream_path("news", &alice), &[]);
    assert_eq!(
        (sse.status, err["code"].as_str()),
        (429, Some("too_many_connections"))
    );
    assert!(sse.head.contains("Retry-After: "), "{}", sse.head);
    let refused = RawWs::connect(server.addr, &format!("/ws?token={alice}"), &[]);
    assert_eq!(refused.status, 429, "before the upgrade");
    // Another token of the same subject counts the same.
    let (sse, _) = open_sse(
        &server,
        &stream_path("news", &mint("alice", &["news"])),
        &[],
    );
    assert_eq!(sse.status, 429);
    let (bob, _) = open_sse(&server, &stream_path("news", &mint("bob", &["news"])), &[]);
    assert_eq!(bob.status, 200, "other subjects are counted apart");
    let subject_limit = r#"redix_connections_rejected_total{reason="subject_limit"}"#;
    assert_eq!(server.metric(subject_limit), 3.0);

    // A closed stream gives its place back.
    drop(first);
    let mut reopened = None;
    wait_until("alice's place back", || {
        let (sse, _) = open_sse(&server, &stream_path("news", &alice), &[]);
        let ok = sse.status == 200;
        reopened = ok.then_some(sse);
        ok
    });
    drop((ws, reopened));
}

#[test]
fn the_origin_allowlist_covers_sse_job_streams_and_websockets() {
    let server = Server::start(&["--set", r#"auth.allowed_origins=["https://ok.example"]"#]);
    let evil = "Origin: https://evil.example";
    let (status, body) = request(server.addr, "GET", "/api/stream?channels=news", &[evil], "");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("origin_not_allowed"), "{body}");
    let (status, body) = request(server.addr, "GET", "/api/ask?job=abc", &[evil], "");
    assert_eq!(status, 403, "{body}");
    assert_eq!(RawWs::connect(server.addr, "/ws", &[evil]).status, 403);

    // The listed origin, and requests without one (curl, servers, a
    // same-origin EventSource), pass.
    let ok = "Origin: https://ok.example";
    assert_eq!(
        SseClient::open(server.addr, "/api/stream?channels=news", &[ok]).status,
        200
    );
    assert_eq!(
        SseClient::open(server.addr, "/api/stream?channels=news", &[]).status,
        200
    );
    assert_eq!(RawWs::connect(server.addr, "/ws", &[ok]).status, 101);
    assert_eq!(RawWs::connect(server.addr, "/ws", &[]).status, 101);
    assert_eq!(
        server.metric(r#"redix_connections_rejected_total{reason="origin"}"#),
        3.0
    );
}

#[test]
fn token_mode_needs_a_long_enough_secret_at_start() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_redix"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .output()
            .expect("run redix");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["--set", "auth.subscribe=token"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("needs at least one auth.token_secrets"),
        "{stderr}"
    );
    let (code, stderr) = run(&[
        "--set",
        "auth.subscribe=token",
        "--set",
        r#"auth.token_secrets=["short-secret"]"#,
    ]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("auth.token_secrets[0] is shorter than 32 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("short-secret"), "never logged: {stderr}");
}
