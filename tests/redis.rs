//! Redis mode against a real `redis-server` started per test on a free
//! port: two nodes acting as one, resume across nodes, cluster-wide
//! deduplication, Redis dying, restarting and pausing, and publishing from
//! outside redix with the documented script.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// The next data event: (stream id, data).
fn next_data(c: &mut SseClient) -> (String, serde_json::Value) {
    let ev = c.next_message().expect("an event");
    assert_eq!(ev.event.as_deref(), Some("message"), "{ev:?}");
    let v: serde_json::Value = serde_json::from_str(&ev.data).expect("json");
    let id = ev.id.expect("id");
    assert_eq!(v["id"], id.as_str());
    (id, v["data"].clone())
}

fn next_ws_data(ws: &mut RawWs) -> (String, serde_json::Value) {
    let f = ws.read_non_ping().expect("a frame");
    let v: serde_json::Value = serde_json::from_str(&f.text()).expect("json");
    assert_eq!(v["type"], "message", "{v}");
    (v["id"].as_str().expect("id").to_string(), v["data"].clone())
}

fn ready(node: &Server) -> bool {
    get(node.addr, "/readyz").0 == 200
}

#[test]
fn an_event_published_on_one_node_reaches_the_other_in_order_once() {
    let redis = RedisServer::start();
    let a = redis_node(&redis, &[]);
    let b = redis_node(&redis, &[]);
    let mut sse = SseClient::connect(b.addr, "news");
    assert_eq!(sse.status, 200, "{}", sse.head);
    let mut ws = RawWs::connect(b.addr, "/ws", &[]);
    ws_subscribe(&mut ws, "news");
    let ids: Vec<String> = (0..100)
        .map(|i| publish_stream_id(a.addr, "news", &format!(r#"{{"n":{i}}}"#)))
        .collect();
    assert!(
        ids.windows(2).all(|w| stream_id(&w[0]) < stream_id(&w[1])),
        "stream ids grow"
    );
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            next_data(&mut sse),
            (id.clone(), serde_json::json!({ "n": i }))
        );
        assert_eq!(
            next_ws_data(&mut ws),
            (id.clone(), serde_json::json!({ "n": i }))
        );
    }
    // Exactly once: the next thing either client sees is the next publish.
    let end = publish_stream_id(a.addr, "news", r#""end""#);
    assert_eq!(next_data(&mut sse).0, end);
    assert_eq!(next_ws_data(&mut ws).0, end);
    // Two clients on one channel: one subscription, two Redis connections.
    assert_eq!(b.metric("redix_redis_channels_subscribed"), 1.0);
    let fds = fds_accounted(&b);
    assert_eq!(fds["owned"]["redis"], 2, "{fds}");
    // The census finds them by Redis's port; nothing is left unowned.
    let mut census = serde_json::Value::Null;
    wait_until("the census to place every fd", || {
        let (_, body) = get(b.addr, "/debug/fds");
        census = serde_json::from_str(&body).expect("json");
        census["unowned_total"] == 0
    });
    assert!(
        census["fds_by_owner"]["redis"].as_u64() >= Some(2),
        "{census}"
    );
}

#[test]
fn a_client_moving_to_another_node_resumes_from_the_stream() {
    let redis = RedisServer::start();
    let a = redis_node(&redis, &[]);
    let b = redis_node(&redis, &[]);
    let mut c = SseClient::connect(a.addr, "moves");
    assert_eq!(c.status, 200);
    let mut ids: Vec<String> = (0..30)
        .map(|i| publish_stream_id(a.addr, "moves", &i.to_string()))
        .collect();
    for id in &ids[..10] {
        assert_eq!(&next_data(&mut c).0, id);
    }
    c.abort();
    ids.extend((30..50).map(|i| publish_stream_id(a.addr, "moves", &i.to_string())));
    // Node B never had this channel: it loads it from the stream.
    let mut c = SseClient::connect(b.addr, &format!("moves&lastEventId={}", ids[9]));
    assert_eq!(c.status, 200, "{}", c.head);
    for (i, id) in ids.iter().enumerate().skip(10) {
        assert_eq!(next_data(&mut c), (id.clone(), serde_json::json!(i)));
    }
    let end = publish_stream_id(b.addr, "moves", r#""end""#);
    assert_eq!(next_data(&mut c).0, end, "nothing twice");
}

#[test]
fn a_cursor_older_than_the_stream_gets_a_reset_on_any_node() {
    let redis = RedisServer::start();
    let keep = ["--set", "history.max_events=5"];
    let a = redis_node(&redis, &keep);
    let ids: Vec<String> = (0..300)
        .map(|i| publish_stream_id(a.addr, "short", &i.to_string()))
        .collect();
    let b = redis_node(&redis, &keep);
    let mut c = SseClient::connect(b.addr, &format!("short&lastEventId={}", ids[0]));
    assert_eq!(c.status, 200);
    let reset = c.next_message().unwrap();
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
    for id in &ids[295..] {
        assert_eq!(&next_data(&mut c).0, id);
    }
}

#[test]
fn publisher_ids_are_deduplicated_across_nodes() {
    let redis = RedisServer::start();
    let a = redis_node(&redis, &[]);
    let b = redis_node(&redis, &[]);
    let mut c = SseClient::connect(b.addr, "orders");
    let body = r#"{"channel":"orders","data":{"n":17},"id":"order-17"}"#;
    let (s1, v1) = try_publish(a.addr, body);
    let (s2, v2) = try_publish(b.addr, body);
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(
        (v1["duplicate"].clone(), v2["duplicate"].clone()),
        (false.into(), true.into())
    );
    assert_eq!(v1["id"], v2["id"]);
    assert_eq!(next_data(&mut c).0, v1["id"].as_str().unwrap());
    let end = publish_stream_id(a.addr, "orders", r#""end""#);
    assert_eq!(next_data(&mut c).0, end, "the duplicate was not delivered");
}

#[test]
fn losing_redis_degrades_both_nodes_and_a_restart_resubscribes_them() {
    let mut redis = RedisServer::start();
    let a = redis_node(&redis, &[]);
    let b = redis_node(&redis, &[]);
    let mut on_a = SseClient::connect(a.addr, "live");
    let mut on_b = SseClient::connect(b.addr, "live");
    let first = publish_stream_id(a.addr, "live", "1");
    assert_eq!(next_data(&mut on_a).0, first);
    assert_eq!(next_data(&mut on_b).0, first);

    redis.kill();
    wait_until("both nodes to say not ready", || !ready(&a) && !ready(&b));
    let body = r#"{"channel":"live","data":2}"#;
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let text = raw_exchange(a.addr, req.as_bytes());
    assert_eq!(status_of(&text), 503, "{text}");
    assert!(text.contains("Retry-After: 1\r\n"), "{text}");
    assert!(text.contains("redis_unavailable"), "{text}");
    // Local fan-out goes on: a loaded channel still serves new clients
    // from its history; a channel never loaded cannot.
    let mut late = SseClient::connect(b.addr, "live&lastEventId=0");
    assert_eq!(late.status, 200, "{}", late.head);
    assert_eq!(next_data(&mut late).0, first);
    assert_eq!(SseClient::connect(b.addr, "never-loaded").status, 503);

    redis.restart();
    let back = Instant::now();
    wait_until("both nodes ready again", || ready(&a) && ready(&b));
    eprintln!("nodes ready {:?} after the restart", back.elapsed());
    let second = publish_stream_id(b.addr, "live", "2");
    for c in [&mut on_a, &mut on_b, &mut late] {
        assert_eq!(next_data(c), (second.clone(), serde_json::json!(2)));
    }
    assert!(a.metric("redix_redis_reconnects_total") >= 2.0);
    // Redis came back empty: both nodes noticed, and a node that never had
    // the channel answers a resume from before the loss with a reset.
    assert_eq!(a.metric("redix_redis_data_losses_total"), 1.0);
    assert_eq!(b.metric("redix_redis_data_losses_total"), 1.0);
    let fresh = redis_node(&redis, &[]);
    // `first` was lost with Redis: a client that had not seen it learns so.
    let mut resumed = SseClient::connect(fresh.addr, "live&lastEventId=0");
    assert_eq!(resumed.status, 200, "{}", resumed.head);
    let ev = resumed.next_message().unwrap();
    assert_eq!(ev.event.as_deref(), Some("reset"), "{ev:?}");
    assert_eq!(next_data(&mut resumed).0, second);
}

/// Cuts every pub/sub connection, then publishes `n` events on `a` at once
/// (pipelined); returns their ids.
fn cut_and_publish(redis: &RedisServer, a: &Server, channel: &str, n: usize) -> Vec<String> {
    let killed = redis
        .command(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .unwrap();
    assert!(killed.starts_with(':'), "{killed}");
    let mut body = Vec::new();
    for i in 0..n {
        push_publish(&mut body, channel, &i.to_string());
    }
    let mut s = std::net::TcpStream::connect(a.addr).unwrap();
    std::io::Write::write_all(&mut s, &body).unwrap();
    let mut r = std::io::BufReader::new(s);
    (0..n)
        .map(|_| {
            read_json_response(&mut r)["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn events_published_while_a_node_was_cut_off_arrive_after_it_reconnects() {
    let redis = RedisServer::start();
    let a = redis_node(&redis, &[]);
    let b = redis_node(&redis, &[]);
    let mut c = SseClient::connect(b.addr, "gap");
    let loads = b.metric("redix_redis_loads_total");
    // Fewer events than the history holds: B gets every one, from pub/sub
    // or from the stream when it resubscribes, in order and once.
    let ids = cut_and_publish(&redis, &a, "gap", 50);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(next_data(&mut c), (id.clone(), serde_json::json!(i)));
    }
    let end = publish_stream_id(a.addr, "gap", r#""end""#);
    assert_eq!(next_data(&mut c).0, end, "nothing twice");
    assert!(
        b.metric("redix_redis_loads_total") > loads,
        "B reloaded the channel"
    );

    // More events than the history holds may outrun it: what B can still
    // read arrives in order and once, and a gap it cannot fill is
    // announced with a reset right where it is.
    wait_until("B to be back", || ready(&b));
    let ids = cut_and_publish(&redis, &a, "gap", 300);
    let end = publish_stream_id(a.addr, "gap", r#""end""#);
    let (mut next, mut reset_pending, mut resets) = (0, false, 0);
    loop {
        let ev = c.next_message().expect("an event");
        if ev.event.as_deref() == Some("reset") {
            reset_pending = true;
            resets += 1;
            continue;
        }
        let id = ev.id.expect("id");
        if id == end {
            assert_eq!(next, ids.len(), "the last events arrived");
            break;
        }
        let at = ids.iter().position(|x| *x == id).expect("a published id");
        assert!(at >= next, "in order, once: {at} after {next}");
        assert!(
            at == next || reset_pending,
            "events {next}..{at} lost without a reset"
        );
        reset_pending = false;
        next = at + 1;
    }
    eprintln!("gap test: {resets} resets");
}

#[test]
fn twenty_redis_restarts_leave_every_node_at_its_fd_baseline() {
    let mut redis = RedisServer::start();
    let fast = ["--set", "redis.canary_ms=100"];
    let nodes = [redis_node(&redis, &fast), redis_node(&redis, &fast)];
    let mut clients: Vec<SseClient> = nodes
        .iter()
        .map(|n| SseClient::connect(n.addr, "fd"))
        .collect();
    let baseline: Vec<usize> = nodes.iter().map(Server::fd_count).collect();
    for round in 0..20 {
        redis.kill();
        wait_until(&format!("round {round}: not ready"), || {
            nodes.iter().all(|n| !ready(n))
        });
        redis.restart();
        wait_until(&format!("round {round}: ready"), || nodes.iter().all(ready));
    }
    for (node, base) in nodes.iter().zip(&baseline) {
        wait_until("fds back to the baseline", || node.fd_count() == *base);
        // redix's own count: the baseline plus the report's connection and
        // the `/proc/self/fd` listing it reads.
        let fds = fds_at(node, base + 2);
        assert_eq!(fds["owned"]["redis"], 2, "{fds}");
        assert_eq!(
            fds["owned"]["connections"], 2,
            "the stream and the report: {fds}"
        );
    }
    let id = publish_stream_id(nodes[0].addr, "fd", "1");
    for c in &mut clients {
        assert_eq!(next_data(c).0, id);
    }
}

/// A keep-alive publisher that takes any status and reconnects when the
/// server closes (it does after a request timed out waiting for Redis).
struct KeepAlive {
    addr: std::net::SocketAddr,
    conn: Option<std::io::BufReader<std::net::TcpStream>>,
}

impl KeepAlive {
    fn new(addr: std::net::SocketAddr) -> KeepAlive {
        KeepAlive { addr, conn: None }
    }

    /// (status, JSON body); status 0 when the connection broke.
    fn publish(&mut self, body: &str) -> (u16, serde_json::Value) {
        use std::io::{BufRead, Read, Write};
        let addr = self.addr;
        let conn = self.conn.get_or_insert_with(|| {
            let s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(DEADLINE)).unwrap();
            std::io::BufReader::new(s)
        });
        let req = format!(
            "POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut head = String::new();
        let ok = conn.get_mut().write_all(req.as_bytes()).is_ok()
            && conn.read_line(&mut head).unwrap_or(0) > 0;
        if !ok {
            self.conn = None;
            return (0, serde_json::Value::Null);
        }
        let status = status_of(&head);
        let (mut len, mut close) = (0, false);
        loop {
            let mut line = String::new();
            conn.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length: ") {
                len = v.trim().parse().expect("length");
            }
            close |= lower.starts_with("connection: close");
        }
        let mut body = vec![0; len];
        conn.read_exact(&mut body).expect("body");
        if close {
            self.conn = None;
        }
        let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, v)
    }
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_paused_redis_under_publishing_load_flips_readiness_and_nothing_grows() {
    let redis = RedisServer::start();
    // History big enough that the reload after the pause finds every event
    // still in the stream (a smaller one would announce a reset instead).
    let a = redis_node(
        &redis,
        &[
            "--set",
            "redis.wait_ms=2000",
            "--set",
            "history.max_events=200000",
        ],
    );
    let mut c = SseClient::connect(a.addr, "busy");
    let rss_before = rss_kib(a.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let statuses = Arc::new(Mutex::new(HashSet::<u16>::new()));
    let publishers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, acked, statuses, addr) =
                (stop.clone(), acked.clone(), statuses.clone(), a.addr);
            std::thread::spawn(move || {
                // Keep-alive, so the run does not churn through ports.
                let mut conn = KeepAlive::new(addr);
                while !stop.load(Ordering::Relaxed) {
                    let (status, v) = conn.publish(r#"{"channel":"busy","data":1}"#);
                    statuses.lock().unwrap().insert(status);
                    if status == 200 {
                        acked
                            .lock()
                            .unwrap()
                            .push(v["id"].as_str().unwrap().to_string());
                    }
                }
            })
        })
        .collect();
    wait_until("publishes to flow", || acked.lock().unwrap().len() > 100);
    redis.pause();
    let paused = Instant::now();
    wait_until("readiness to flip during the pause", || !ready(&a));
    // The pause itself is the scenario: five seconds of a hung Redis.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(paused.elapsed()));
    redis.resume();
    wait_until("readiness to come back", || ready(&a));
    let before = acked.lock().unwrap().len();
    wait_until("publishes to flow again", || {
        acked.lock().unwrap().len() > before + 100
    });
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    assert!(
        statuses.contains(&503),
        "publishes during the pause got 503: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "only 200 or 503 (0: the connection broke): {statuses:?}"
    );
    // Every acknowledged publish arrives, in order, once.
    let end = publish_stream_id(a.addr, "busy", r#""end""#);
    let acked: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let mut seen = HashSet::new();
    let mut last = (0, 0);
    loop {
        let (id, _) = next_data(&mut c);
        assert!(stream_id(&id) > last, "in order");
        last = stream_id(&id);
        assert!(seen.insert(id.clone()), "once");
        if id == end {
            break;
        }
    }
    let missing = acked.difference(&seen).count();
    assert_eq!(missing, 0, "acknowledged publishes never delivered");
    wait_until("the pub/sub backlog to drain", || {
        a.metric("redix_redis_pubsub_backlog_bytes") == 0.0
    });
    let grown = rss_kib(a.pid()).saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew {grown} KiB");
}

#[test]
fn redix_publish_and_the_documented_script_reach_clients_with_stream_ids() {
    let redis = RedisServer::start();
    let a = redis_node(&redis, &[]);
    let mut c = SseClient::connect(a.addr, "ext");
    let out = Command::new(env!("CARGO_BIN_EXE_redix"))
        .args([
            "publish",
            "--redis",
            &redis.url(),
            "ext",
            r#"{"via":"cli"}"#,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = answer["id"].as_str().unwrap();
    stream_id(id);
    assert_eq!(
        next_data(&mut c),
        (id.to_string(), serde_json::json!({"via": "cli"}))
    );

    // Another service, with the script and the key layout the README gives.
    let script = include_str!("../src/bridge/scripts/publish.lua");
    for (data, want) in [
        (r#"{"via":"script"}"#, serde_json::json!({"via": "script"})),
        ("plain text", serde_json::json!("plain text")),
    ] {
        let reply = redis
            .command(&[
                "EVAL",
                script,
                "2",
                "redix:s:ext",
                "redix:last",
                "redix:c:ext",
                data,
                "100",
                "300000",
                "300000",
            ])
            .unwrap();
        // *2 $len id :0
        let id = reply.lines().nth(2).unwrap().to_string();
        assert!(reply.ends_with(":0\r\n"), "{reply}");
        assert_eq!(next_data(&mut c), (id, want));
    }
}

#[test]
fn a_node_started_before_redis_refuses_then_serves_once_it_appears() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let a = Server::start(&["--redis", &url]);
    assert_eq!(get(a.addr, "/readyz").0, 503);
    let (status, v) = try_publish(a.addr, r#"{"channel":"x","data":1}"#);
    assert_eq!(status, 503, "{v}");
    assert_eq!(SseClient::connect(a.addr, "x").status, 503);
    let redis = RedisServer::start_on(port);
    wait_until("the node to find Redis", || ready(&a));
    let mut c = SseClient::connect(a.addr, "x");
    assert_eq!(c.status, 200);
    let id = publish_stream_id(a.addr, "x", "1");
    assert_eq!(next_data(&mut c).0, id);
    assert_eq!(a.metric("redix_redis_data_losses_total"), 0.0);
    drop(redis);
}

#[test]
fn a_websocket_subscribe_on_another_node_loads_the_channel_and_replays_since() {
    let redis = RedisServer::start();
    let a = redis_node(&redis, &[]);
    let b = redis_node(&redis, &[]);
    let ids: Vec<String> = (0..10)
        .map(|i| publish_stream_id(a.addr, "ws-moves", &i.to_string()))
        .collect();
    let mut ws = RawWs::connect(b.addr, "/ws", &[]);
    // Node B has never seen the channel: the ack waits for it to load.
    ws.send_text(&format!(
        r#"{{"type":"subscribe","channel":"ws-moves","since":"{}"}}"#,
        ids[3]
    ));
    let ack: serde_json::Value =
        serde_json::from_str(&ws.read_non_ping().expect("ack").text()).unwrap();
    assert_eq!(ack["type"], "subscribed", "{ack}");
    for (i, id) in ids.iter().enumerate().skip(4) {
        assert_eq!(next_ws_data(&mut ws), (id.clone(), serde_json::json!(i)));
    }
    let live = publish_stream_id(a.addr, "ws-moves", "10");
    assert_eq!(next_ws_data(&mut ws).0, live);
    ws.send_text(r#"{"type":"unsubscribe","channel":"ws-moves"}"#);
    let bye: serde_json::Value =
        serde_json::from_str(&ws.read_non_ping().expect("reply").text()).unwrap();
    assert_eq!(bye["type"], "unsubscribed");
    wait_until("B to unsubscribe the channel in Redis", || {
        b.metric("redix_redis_channels_subscribed") == 0.0
    });
}

#[test]
fn a_stream_waiting_for_a_hung_redis_gets_503_and_gives_its_slot_back() {
    let redis = RedisServer::start();
    let a = redis_node(&redis, &["--set", "redis.wait_ms=300"]);
    redis.pause();
    // More waits than the per-IP stream limit (20): each one that times
    // out must give its slot back, or the later ones would get 429.
    for i in 0..25 {
        let c = SseClient::connect(a.addr, &format!("hung-{i}"));
        assert_eq!(c.status, 503, "{}", c.head);
        assert!(c.head.contains("Retry-After: 1"), "{}", c.head);
    }
    let (status, v) = try_publish(a.addr, r#"{"channel":"hung-0","data":1}"#);
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "redis_unavailable", "{v}");
    redis.resume();
    wait_until("the node to recover", || ready(&a));
    let mut c = SseClient::connect(a.addr, "hung-0");
    assert_eq!(c.status, 200);
    let id = publish_stream_id(a.addr, "hung-0", "1");
    assert_eq!(next_data(&mut c).0, id);
    wait_until("no channel kept for the streams that gave up", || {
        a.metric("redix_hub_channels") == 1.0
    });
}

#[test]
fn nodes_sharing_one_port_serve_every_client_as_one() {
    let redis = RedisServer::start();
    let a = redis_node(&redis, &["--set", "workers=1"]);
    let listen = format!("listen=127.0.0.1:{}", a.addr.port());
    // A second process on the same port (SO_REUSEPORT), as in a systemd
    // template with several instances.
    let url = redis.url();
    let b = Server::start(&["--redis", &url, "--set", "workers=1", "--set", &listen]);
    // /readyz on the shared port may reach either process: wait for B's own word.
    wait_until("node B to be ready", || {
        b.logs().contains("Redis round trip works")
    });
    assert_eq!(a.addr, b.addr);
    let (fa, fb) = (a.fd_count(), b.fd_count());
    let mut clients: Vec<SseClient> = (0..20)
        .map(|_| SseClient::connect(a.addr, "shared"))
        .collect();
    for c in &clients {
        assert_eq!(c.status, 200, "{}", c.head);
    }
    assert!(
        a.fd_count() > fa && b.fd_count() > fb,
        "the kernel spread the clients over both processes"
    );
    let id = publish_stream_id(a.addr, "shared", "1");
    for c in &mut clients {
        assert_eq!(next_data(c).0, id);
    }
}

#[test]
fn clients_hopping_between_nodes_at_random_get_every_event_once_in_order() {
    const EVENTS: usize = 3_000;
    const CHANNELS: [&str; 3] = ["h0", "h1", "h2"];
    let redis = RedisServer::start();
    let args = [
        "--sse-per-ip",
        "200",
        "--set",
        "history.max_events=5000",
        "--set",
        "queue.max_events=100000",
        "--set",
        "queue.max_bytes=67108864",
    ];
    let nodes = [redis_node(&redis, &args), redis_node(&redis, &args)];
    let addrs = [nodes[0].addr, nodes[1].addr];
    let chans_of = |i: usize| -> Vec<&'static str> {
        match i % 3 {
            0 => vec![CHANNELS[i % 3]],
            1 => vec!["h0", "h2"],
            _ => CHANNELS.to_vec(),
        }
    };
    let clients: Vec<_> = (0..40)
        .map(|i| {
            std::thread::spawn(move || match i % 2 {
                0 => churning_sse(&addrs, i, &chans_of(i)),
                _ => churning_ws(&addrs, i, &chans_of(i)),
            })
        })
        .collect();
    // Publishes alternate between the nodes, each answered before the next.
    let mut publishers = [Publisher::connect(addrs[0]), Publisher::connect(addrs[1])];
    let mut published = Vec::with_capacity(EVENTS + 3);
    for n in 0..EVENTS {
        let ch = CHANNELS[n % 3];
        let id = publishers[n % 2].publish_id(ch, &format!(r#"{{"n":{n}}}"#));
        published.push((ch.to_string(), id));
    }
    for ch in CHANNELS {
        let id = publishers[0].publish_id(ch, r#"{"end":true}"#);
        published.push((ch.to_string(), id));
    }
    for (i, handle) in clients.into_iter().enumerate() {
        let got = handle
            .join()
            .unwrap_or_else(|_| panic!("client {i} failed"));
        check_churned(i, &chans_of(i), &got, &published, i % 2 == 0);
    }
    for node in &nodes {
        assert_eq!(node.metric("redix_slow_disconnects_total"), 0.0);
        assert!(node.metric("redix_replayed_total") > 0.0);
    }
}

#[test]
fn a_flood_does_not_get_the_subscriber_cut_off_by_redis() {
    use std::io::{Read, Write};
    const EVENTS: usize = 10_000;
    let redis = RedisServer::start();
    // Redis drops a pub/sub client whose output buffer passes 4 MB (or
    // 2 MB for 5 s); the flood below is about 20 MB.
    let set = redis
        .command(&[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "pubsub 4mb 2mb 5",
        ])
        .unwrap();
    assert!(set.starts_with("+OK"), "{set}");
    let a = redis_node(
        &redis,
        &[
            "--set",
            "queue.max_events=100000",
            "--set",
            "queue.max_bytes=268435456",
        ],
    );
    let mut c = SseClient::connect(a.addr, "flood");
    let reader = std::thread::spawn(move || {
        let mut n = 0;
        while n < EVENTS {
            next_data(&mut c);
            n += 1;
        }
        n
    });
    // Straight into Redis with the publish script, pipelined, as fast as
    // Redis takes it.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    let script = include_str!("../src/bridge/scripts/publish.lua");
    let data = format!(r#""{}""#, "x".repeat(2000));
    let mut out = Vec::new();
    for _ in 0..EVENTS {
        let args = [
            "EVAL",
            script,
            "2",
            "redix:s:flood",
            "redix:last",
            "redix:c:flood",
            &data,
            "100",
            "300000",
            "300000",
        ];
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
    }
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&out).unwrap());
    // Read the replies so Redis never waits on us.
    let mut replies = Vec::new();
    let mut buf = vec![0; 1 << 16];
    while replies.windows(4).filter(|w| w == b":0\r\n").count() < EVENTS {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "Redis closed the publishing connection");
        replies.extend_from_slice(&buf[..n]);
        let keep = replies.len().saturating_sub(3);
        let done = replies[..keep]
            .windows(4)
            .filter(|w| w == b":0\r\n")
            .count();
        if done >= EVENTS {
            break;
        }
    }
    writer.join().unwrap();
    assert_eq!(reader.join().unwrap(), EVENTS);
    assert_eq!(
        a.metric("redix_redis_reconnects_total"),
        0.0,
        "the node's pub/sub connection was never cut"
    );
}
