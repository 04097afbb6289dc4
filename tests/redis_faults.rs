//! Redis-mode faults. A fake Redis (`common::fake_redis`) plays what a real
//! server will not do on demand: a pub/sub flood the node cannot keep up
//! with, canaries that never return, RESP garbage, ids no Redis hands out.
//! A real `redis-server` plays the rest (a password that needs decoding).
//!
//! After each fault the node must come back by itself: a new pub/sub
//! connection within the backoff cap, `/readyz` 200, one reader thread,
//! every fd accounted for, and events published afterwards delivered.

mod common;

use std::time::Duration;

use common::fake_redis::{sha1_hex, FakeRedis};
use common::*;

/// The backoff cap the nodes here run with.
const BACKOFF_MAX_MS: u64 = 500;

fn ready(node: &Server) -> bool {
    get(node.addr, "/readyz").0 == 200
}

/// A node on the fake Redis with a fast canary and a short backoff cap,
/// waited on until ready; `extra` adds settings.
fn fake_node(fake: &FakeRedis, extra: &[&str]) -> Server {
    let url = fake.url();
    let cap = format!("redis.backoff_max_ms={BACKOFF_MAX_MS}");
    let mut args = vec![
        "--redis",
        &url,
        "--set",
        "redis.canary_ms=100",
        "--set",
        &cap,
    ];
    args.extend_from_slice(extra);
    let node = Server::start(&args);
    wait_until("the node to be ready", || ready(&node));
    node
}

/// Threads of the node named after the pub/sub reader (names are cut to
/// 15 bytes by the kernel).
fn reader_threads(node: &Server) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", node.pid())).expect("tasks");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "redix-redis-rea")
        .count()
}

/// The node's `/debug/fds` report.
fn fd_report(node: &Server) -> serde_json::Value {
    let (status, body) = get(node.addr, "/debug/fds");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

/// Waits until the node holds as many fds besides client connections as
/// in `baseline`, every one accounted for, two of them to Redis.
fn fds_back_to(node: &Server, baseline: &serde_json::Value) {
    // Client connections come and go (a readiness poll may still be
    // closing when the baseline was taken): compare everything else.
    let others = |r: &serde_json::Value| {
        r["open"].as_i64().unwrap_or(-1) - r["owned"]["connections"].as_i64().unwrap_or(0)
    };
    let what = format!("fds back to the baseline {baseline}");
    wait_until(&what, || {
        let last = fd_report(node);
        others(&last) == others(baseline) && last["unaccounted"] == 0 && last["owned"]["redis"] == 2
    });
}

/// The next data event's (id, data).
fn next_data(c: &mut SseClient) -> (String, serde_json::Value) {
    let ev = c.next_message().expect("an event");
    assert_eq!(ev.event.as_deref(), Some("message"), "{ev:?}");
    let v: serde_json::Value = serde_json::from_str(&ev.data).expect("json");
    (ev.id.expect("id"), v["data"].clone())
}

/// A client on `channel` that has seen one event go through, so the
/// channel is subscribed and loaded.
fn live_client(node: &Server, channel: &str) -> SseClient {
    let mut c = SseClient::connect(node.addr, channel);
    assert_eq!(c.status, 200, "{}", c.head);
    let id = publish_stream_id(node.addr, channel, r#""first""#);
    assert_eq!(next_data(&mut c).0, id);
    c
}

/// After a fault on the first pub/sub connection: the second one came
/// within the backoff cap, the node is ready, one reader thread is left,
/// and an event published now reaches a new client of `channel`.
fn assert_recovered(fake: &FakeRedis, node: &Server, channel: &str) {
    wait_until("a new pub/sub connection", || {
        fake.pubsub_connections() >= 2
    });
    let gap = fake.reconnect_gap().expect("the first connection ended");
    // The wait is at most the cap; the rest is connecting on a busy machine.
    let slack = Duration::from_millis(1500);
    assert!(
        gap <= Duration::from_millis(BACKOFF_MAX_MS) + slack,
        "reconnected after {gap:?}"
    );
    wait_until("the node to be ready again", || ready(node));
    assert!(node.metric("redix_redis_reconnects_total") >= 1.0);
    wait_until("one pub/sub reader thread", || reader_threads(node) == 1);
    let mut c = SseClient::connect(node.addr, channel);
    let id = publish_stream_id(node.addr, channel, r#""after""#);
    assert_eq!(next_data(&mut c), (id, serde_json::json!("after")));
}

#[test]
fn a_node_behind_a_flood_that_loses_its_canary_reconnects() {
    let fake = FakeRedis::start();
    let node = fake_node(&fake, &["--set", "redis.ready_within_ms=1000"]);
    let baseline = fd_report(&node);
    let flooded = live_client(&node, "flood");
    // Events pour in faster than the node handles them and no canary
    // returns: the reader ends up blocked on its full queue when the
    // session gives up on the connection.
    fake.stall_pubsub("redix:c:flood");
    assert_recovered(&fake, &node, "flood");
    drop(flooded);
    fds_back_to(&node, &baseline);
}

#[test]
fn resp_garbage_behind_a_flood_ends_the_connection_and_the_node_reconnects() {
    let fake = FakeRedis::start();
    // The canary may lag as it likes: the garbage is what ends the session.
    let node = fake_node(&fake, &["--set", "redis.ready_within_ms=60000"]);
    let baseline = fd_report(&node);
    let flooded = live_client(&node, "flood");
    fake.stall_pubsub("redix:c:flood");
    wait_until("the pub/sub backlog to fill", || {
        node.metric("redix_redis_pubsub_backlog_bytes") > 48e6
    });
    fake.inject(b"%not RESP\r\n");
    assert_recovered(&fake, &node, "flood");
    assert!(node.logs().contains("protocol"), "{}", node.logs());
    drop(flooded);
    fds_back_to(&node, &baseline);
}

#[test]
fn the_fake_answers_script_loads_with_the_real_sha1() {
    assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
}

/// A node on `url` (a real Redis that wants a password) becomes ready,
/// which needs both connections, and an event goes through.
fn assert_serves(url: &str) {
    let node = Server::start(&["--redis", url]);
    wait_until("both connections to authenticate", || ready(&node));
    let _client = live_client(&node, "auth");
    assert_eq!(node.metric("redix_redis_reconnects_total"), 0.0);
}

#[test]
fn a_password_with_reserved_characters_authenticates_both_connections() {
    let redis = RedisServer::start();
    let pass = "p@ss:w/rd%25";
    let set = redis.command(&["CONFIG", "SET", "requirepass", pass]);
    assert!(
        set.as_deref().is_some_and(|r| r.starts_with("+OK")),
        "{set:?}"
    );
    // Percent-encoded in the URL, as RFC 3986 wants for `@ : / %`.
    assert_serves(&format!(
        "redis://:p%40ss%3Aw%2Frd%2525@127.0.0.1:{}",
        redis.port
    ));
}

#[test]
fn a_user_name_with_reserved_characters_authenticates_both_connections() {
    let redis = RedisServer::start();
    let acl = [
        "ACL", "SETUSER", "us@r:1", "on", ">p@ss/2", "~*", "&*", "+@all",
    ];
    let set = redis.command(&acl);
    assert!(
        set.as_deref().is_some_and(|r| r.starts_with("+OK")),
        "{set:?}"
    );
    assert_serves(&format!(
        "redis://us%40r%3A1:p%40ss%2F2@127.0.0.1:{}",
        redis.port
    ));
}

#[test]
fn ids_no_redis_hands_out_do_not_pin_a_channel() {
    let fake = FakeRedis::start();
    let node = fake_node(&fake, &[]);
    let mut c = live_client(&node, "pinned");
    // A plain number (embedded mode's format), the largest packed stream
    // id, ids past any clock and ones that do not fit: none is an event.
    for id in [
        "18446744073709551615",
        "17592186044415-1048575",
        "999999999999999-0",
        "99999999999999999999-0",
        "1-99999999",
    ] {
        fake.message("redix:c:pinned", &format!("{id} \"bogus\""));
    }
    let id = publish_stream_id(node.addr, "pinned", r#""after""#);
    assert_eq!(next_data(&mut c), (id, serde_json::json!("after")));
    assert!(ready(&node));
    assert_eq!(reader_threads(&node), 1);
    assert_eq!(node.metric("redix_redis_reconnects_total"), 0.0);
}

/// The status of a stream request on channel `c` with `query` and
/// `headers` (only the head is read: a 200 is a stream that goes on).
fn stream_status(node: &Server, query: &str, headers: &[&str]) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(node.addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut req = format!("GET /api/stream?channels=c{query} HTTP/1.1\r\nHost: t\r\n");
    for h in headers {
        req.push_str(&format!("{h}\r\n"));
    }
    s.write_all(format!("{req}\r\n").as_bytes()).expect("write");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("status line");
    status_of(&line)
}

#[test]
fn a_cursor_in_the_other_mode_s_format_is_refused() {
    let fake = FakeRedis::start();
    let redis_mode = fake_node(&fake, &[]);
    let embedded = Server::start(&[]);
    for (node, cursor) in [
        (&redis_mode, "18446744073709551615"),
        (&redis_mode, "42"),
        (&embedded, "1732412345678-3"),
    ] {
        let header = format!("Last-Event-ID: {cursor}");
        assert_eq!(stream_status(node, "", &[&header]), 400, "{cursor}");
        let query = format!("&lastEventId={cursor}");
        assert_eq!(stream_status(node, &query, &[]), 400, "{cursor}");
    }
    // Each mode's own format still resumes, and `0` is the start in both.
    let good = [
        (&redis_mode, "1732412345678-3"),
        (&redis_mode, "0"),
        (&embedded, "42"),
        (&embedded, "0"),
    ];
    for (node, cursor) in good {
        let header = format!("Last-Event-ID: {cursor}");
        assert_eq!(stream_status(node, "", &[&header]), 200, "{cursor}");
        let query = format!("&lastEventId={cursor}");
        assert_eq!(stream_status(node, &query, &[]), 200, "{cursor}");
    }
}
