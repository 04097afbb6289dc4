//! The admin API against a real server: disconnects by channel, client IP
//! and connection id (SSE gets `event: reconnect` with the hint and its
//! resume id, WebSocket the close code 4000), the connection listing that
//! puts a stalled client first, `/debug/fds` naming a socket nothing owns,
//! and the `admin` scope in front of all of it; a wedged reactor counted as
//! a slow turn.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::Value;

const JSON: &str = "Content-Type: application/json";

/// `POST /api/admin/disconnect` from this machine: (status, JSON body).
fn disconnect(addr: SocketAddr, body: &str) -> (u16, Value) {
    let (status, text) = request(addr, "POST", "/api/admin/disconnect", &[JSON], body);
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// `GET /debug/connections?…` as JSON (asserting the 200).
#[track_caller]
fn connections(addr: SocketAddr, query: &str) -> Value {
    let (status, text) = get(addr, &format!("/debug/connections?{query}"));
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("json")
}

/// Reads SSE events until `event: reconnect`; returns it and the ids of
/// the data events before it.
fn until_reconnect(c: &mut SseClient) -> (SseEvent, Vec<String>) {
    let mut ids = Vec::new();
    loop {
        let ev = c
            .next_event()
            .expect("the stream ends with event: reconnect");
        match ev.event.as_deref() {
            Some("reconnect") => return (ev, ids),
            Some("message") => ids.extend(ev.id),
            _ => {}
        }
    }
}

#[test]
fn a_channel_disconnect_ends_its_streams_with_a_reconnect_hint_and_spares_the_rest() {
    let server = Server::start(&[]);
    let mut sse = SseClient::connect(server.addr, "news");
    let mut other = SseClient::connect(server.addr, "other");
    let mut ws = RawWs::connect(server.addr, "/ws", &[]);
    assert_eq!((sse.status, other.status, ws.status), (200, 200, 101));
    ws_subscribe(&mut ws, "news");
    let published: Vec<String> = (0..3)
        .map(|n| publish(server.addr, "news", &format!(r#"{{"n":{n}}}"#)).to_string())
        .collect();
    for id in &published {
        assert_eq!(sse.next_message().expect("event").id.as_ref(), Some(id));
    }
    for id in &published {
        let frame = ws.read_non_ping().expect("event frame");
        let v: Value = serde_json::from_str(&frame.text()).unwrap();
        assert_eq!(v["id"].as_str(), Some(id.as_str()), "{v}");
    }

    let body = r#"{"channel":"news","reason":"maintenance","retry_ms":1500}"#;
    let (status, answer) = disconnect(server.addr, body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["disconnected"], 2, "{answer}");
    assert_eq!(
        (answer["more"].as_u64(), answer["partial"].as_bool()),
        (Some(0), Some(false))
    );
    assert_eq!(answer["reactors"]["answered"], 2);

    let (last, more) = until_reconnect(&mut sse);
    assert!(more.is_empty(), "nothing new was published: {more:?}");
    assert_eq!(last.retry, Some(1500));
    assert_eq!(
        last.id.as_ref(),
        published.last(),
        "resume after the last event"
    );
    let data: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(
        (data["reason"].as_str(), data["message"].as_str()),
        (Some("operator"), Some("maintenance"))
    );
    assert!(sse.next_event().is_none(), "the stream ends after it");

    let close = loop {
        let f = ws.read_non_ping().expect("a close frame");
        if f.opcode == 8 {
            break f;
        }
    };
    let (code, reason) = close.close_code();
    assert_eq!(code, 4000);
    let reason: Value = serde_json::from_str(&reason).expect("a JSON reason");
    assert_eq!(reason["reason"], "maintenance");
    assert_eq!(reason["retry"], 1500);
    assert_eq!(
        reason["lastEventId"].as_str(),
        published.last().map(String::as_str)
    );

    let id = publish(server.addr, "other", "{}").to_string();
    assert_eq!(other.next_message().expect("still streaming").id, Some(id));
    assert_eq!(server.metric("redix_admin_disconnects_total"), 2.0);
}

#[test]
fn disconnects_by_client_ip_and_by_connection_id() {
    let server = Server::start(&[]);
    let from = |ip: &str| {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let local: SocketAddr = format!("{ip}:0").parse().unwrap();
        sock.bind(&local.into()).unwrap();
        SseClient::connect_with(server.addr, "room", Some(sock))
    };
    let mut far = from("127.0.0.2");
    let mut near = from("127.0.0.1");
    assert_eq!((far.status, near.status), (200, 200));

    let (status, answer) = disconnect(server.addr, r#"{"ip":"127.0.0.2","reason":"abuse"}"#);
    assert_eq!(
        (status, &answer["disconnected"]),
        (200, &Value::from(1)),
        "{answer}"
    );
    let (last, _) = until_reconnect(&mut far);
    assert_eq!(
        last.retry, None,
        "no hint given: the stream's own retry stands"
    );
    assert!(far.next_event().is_none());

    // The other stream, found in the listing by its peer, goes by its id.
    let near_peer = near.reader.get_ref().local_addr().unwrap().to_string();
    let mut id = String::new();
    wait_until("the near stream in the listing", || {
        let listing = connections(server.addr, "sort=age&top=1000");
        let found = listing["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["peer"] == near_peer.as_str())
            .cloned();
        if let Some(c) = found {
            assert_eq!(
                (c["transport"].as_str(), c["channels"][0].as_str()),
                (Some("sse"), Some("room"))
            );
            id = c["id"].as_str().unwrap().to_string();
        }
        !id.is_empty()
    });
    let body = format!(r#"{{"connection":"{id}","reason":"bye","retry_ms":0}}"#);
    let (status, answer) = disconnect(server.addr, &body);
    assert_eq!(
        (status, &answer["disconnected"]),
        (200, &Value::from(1)),
        "{answer}"
    );
    assert_eq!(until_reconnect(&mut near).0.retry, Some(0));
    // Gone: the same id is no longer found, and ids are checked.
    assert_eq!(disconnect(server.addr, &body).0, 404);
    assert_eq!(
        disconnect(server.addr, r#"{"connection":"9-1-1","reason":"x"}"#).0,
        404
    );
    assert_eq!(
        disconnect(server.addr, r#"{"connection":"1-x","reason":"x"}"#).0,
        400
    );
    // Subjects come from subscription tokens: none here, nothing matches.
    let (status, answer) = disconnect(server.addr, r#"{"subject":"alice","reason":"x"}"#);
    assert_eq!((status, &answer["disconnected"]), (200, &Value::from(0)));
}

#[test]
fn a_disconnect_names_exactly_one_selector_and_a_reason() {
    let server = Server::start(&[]);
    let bad = [
        r#"{"reason":"x"}"#,
        r#"{"channel":"a","ip":"127.0.0.1","reason":"x"}"#,
        r#"{"channel":"a"}"#,
        r#"{"channel":"a","reason":"  "}"#,
        r#"{"channel":"a","reason":"x","retry_ms":600001}"#,
        r#"{"ip":"localhost","reason":"x"}"#,
        r#"{"channel":"a","reason":"x","extra":1}"#,
        "not json",
    ];
    for body in bad {
        let (status, answer) = disconnect(server.addr, body);
        assert_eq!(status, 400, "{body}: {answer}");
    }
    for query in ["top=0", "top=1001", "sort=size"] {
        assert_eq!(
            get(server.addr, &format!("/debug/connections?{query}")).0,
            400,
            "{query}"
        );
    }
    assert_eq!(get(server.addr, "/api/admin/disconnect").0, 405);
}

#[test]
fn a_stalled_client_tops_the_queue_listing() {
    let server = Server::start(&[
        "--set",
        "tcp.send_buffer=4096",
        "--set",
        "queue.slow_warnings=1000000",
        "--set",
        "limits.write_timeout_ms=600000",
    ]);
    // A stream on a quiet channel: nothing written since its head.
    let quiet = SseClient::connect(server.addr, "quiet");
    let quiet_peer = quiet.reader.get_ref().local_addr().unwrap().to_string();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stalled = SseClient::connect_with(server.addr, "big", Some(sock));
    let mut reader = SseClient::connect(server.addr, "big");
    assert_eq!((stalled.status, reader.status), (200, 200));
    let stalled_peer = stalled.reader.get_ref().local_addr().unwrap().to_string();
    let pad = "x".repeat(1000);
    let mut publisher = Publisher::connect(server.addr);
    for n in 0..600 {
        publisher.publish("big", &format!(r#"{{"n":{n},"pad":"{pad}"}}"#));
        reader.next_message().expect("the reader keeps up");
    }
    let listing = connections(server.addr, "sort=queue&top=2");
    let rows = listing["connections"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{listing}");
    let top = &rows[0];
    assert_eq!(top["peer"], stalled_peer.as_str(), "{listing}");
    assert_eq!(
        (top["transport"].as_str(), top["channels"][0].as_str()),
        (Some("sse"), Some("big"))
    );
    assert!(top["queued_bytes"].as_u64() > Some(100_000), "{top}");
    assert!(top["queued_events"].as_u64() > Some(100), "{top}");
    assert!(
        top["drops"].as_u64() > Some(0) && top["warnings"] == top["drops"],
        "{top}"
    );
    assert!(rows[1]["queued_bytes"].as_u64() < top["queued_bytes"].as_u64());
    assert_eq!(listing["totals"]["sse"], 3);
    assert!(listing["totals"]["queued_bytes"].as_u64() >= top["queued_bytes"].as_u64());
    // It also tops the drops listing; the quiet stream, written to before
    // any other, tops the idle one (the stalled socket may still take a
    // few bytes now and then, as the kernel makes room).
    let by = |sort: &str| connections(server.addr, &format!("sort={sort}&top=1"));
    let drops = by("drops");
    assert_eq!(
        drops["connections"][0]["peer"],
        stalled_peer.as_str(),
        "{drops}"
    );
    let idle = by("idle");
    assert_eq!(
        idle["connections"][0]["peer"],
        quiet_peer.as_str(),
        "{idle}"
    );
    assert_eq!(idle["connections"][0]["channels"][0], "quiet", "{idle}");
}

#[test]
fn a_socket_nothing_owns_is_named_in_debug_fds() {
    let server = Server::start(&["--set", "debug.test_hooks=true"]);
    let mut admin = HttpConn::connect(server.addr);
    let mut before = Value::Null;
    wait_until("a clean census", || {
        before = admin.fds();
        before["unowned_total"] == 0
    });
    assert_eq!(before["tcp_by_owner"]["listeners"]["LISTEN"], 2, "{before}");
    assert_eq!(
        before["tcp_by_owner"]["connections"]["ESTABLISHED"], 1,
        "{before}"
    );

    let (status, text) = request(server.addr, "POST", "/debug/leak-fd", &[], "");
    assert_eq!(status, 200, "{text}");
    let leak: Value = serde_json::from_str(&text).unwrap();
    // A connection closing at the instant of a census can show for that
    // one report (the hook's own, say): ask until only the leak is left.
    let mut after = Value::Null;
    wait_until("the leaked socket alone unowned", || {
        after = admin.fds();
        after["unowned_total"] == 1
    });
    let named = &after["unowned"][0];
    assert_eq!(
        (&named["fd"], &named["inode"]),
        (&leak["fd"], &leak["inode"]),
        "{after}"
    );
    assert_eq!(
        (named["type"].as_str(), named["tcp_state"].as_str()),
        (Some("socket"), Some("LISTEN"))
    );
    assert_eq!(named["local"], leak["local"]);
    assert_eq!(after["tcp_by_owner"]["unowned"]["LISTEN"], 1, "{after}");
}

#[test]
fn the_admin_endpoints_need_the_admin_scope() {
    let server = Server::start(&[
        "--set",
        "auth.admin_keys=[\"adm\"]",
        "--set",
        "auth.publish_keys=[\"pub\"]",
    ]);
    let body = r#"{"channel":"a","reason":"x"}"#;
    let cases: [(&[&str], u16); 3] = [
        (&[], 401),
        (&["X-API-Key: pub"], 403),
        (&["X-API-Key: adm"], 200),
    ];
    for (headers, want) in cases {
        let (status, text) = request(server.addr, "POST", "/api/admin/disconnect", headers, body);
        assert_eq!(status, want, "disconnect {headers:?}: {text}");
        let (status, text) = request(server.addr, "GET", "/debug/connections", headers, "");
        assert_eq!(status, want, "connections {headers:?}: {text}");
    }
    // The test hook is not served without debug.test_hooks.
    let (status, _) = request(
        server.addr,
        "POST",
        "/debug/leak-fd",
        &["X-API-Key: adm"],
        "",
    );
    assert_eq!(status, 404);
}

#[test]
fn a_wedged_reactor_shows_as_a_slow_turn_in_the_metrics_and_the_log() {
    let server = Server::start(&["--workers", "1", "--set", "debug.wedge=true"]);
    // A busy box can make a turn slow by itself: count from here.
    let over_1s = || server.metric("redix_reactor_slow_turns_total{over=\"1s\"}");
    let over_100ms = || server.metric("redix_reactor_slow_turns_total{over=\"100ms\"}");
    let (before_1s, before_100ms) = (over_1s(), over_100ms());
    let (status, body) = request(server.addr, "POST", "/debug/wedge?ms=1200", &[], "");
    assert_eq!(status, 200, "{body}");
    // The metric is read by the same (only) reactor, after the wedged turn.
    assert!(over_1s() > before_1s, "a turn of 1 s or more counted");
    assert!(over_100ms() > before_100ms, "and as one of 100 ms or more");
    let longest = server.metric("redix_worker_turn_max_ms{worker=\"0\"}");
    assert!(longest >= 1200.0, "longest turn {longest} ms");
    wait_until("the slow turn logged", || {
        server.logs().contains("reactor 0: one turn took")
    });
}
