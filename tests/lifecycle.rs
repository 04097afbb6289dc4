//! Process lifecycle: graceful shutdown on SIGTERM.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn sigterm_sends_reconnect_to_every_stream_and_exits_zero() {
    let mut server = Server::start(&[
        "--set",
        "sse.retry_ms=500",
        "--set",
        "sse.retry_jitter_ms=1000",
    ]);
    let mut clients: Vec<SseClient> = (0..6)
        .map(|_| SseClient::connect(server.addr, "bye"))
        .collect();
    let mut sockets: Vec<RawWs> = (0..4)
        .map(|_| RawWs::connect(server.addr, "/ws", &[]))
        .collect();
    wait_until("streams", || {
        server.metric("redix_connections{transport=\"sse\"}") == 6.0
    });
    wait_until("websockets", || {
        server.metric("redix_connections{transport=\"ws\"}") == 4.0
    });
    server.signal(libc::SIGTERM);
    for ws in sockets.iter_mut() {
        let close = ws.read_non_ping().expect("close frame");
        assert_eq!(close.close_code().0, 1012, "service restart");
        // Answer the closing handshake, as a client does.
        ws.send_frame(0x88, &[0x03, 0xf4], true);
        assert!(ws.read_frame().is_none(), "closed after the handshake");
    }
    for c in clients.iter_mut() {
        let ev = c.next_message().expect("reconnect event");
        assert_eq!(ev.event.as_deref(), Some("reconnect"));
        let retry = ev.retry.expect("retry with the reconnect");
        assert!((500..=1500).contains(&retry), "retry {retry}");
        assert!(c.next_event().is_none(), "stream closed after reconnect");
    }
    let status = server.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", server.logs());
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut server = Server::start(&[
        "--set",
        "shutdown.drain_ms=60000",
        "--set",
        "shutdown.linger_ms=60000",
    ]);
    // A stream that never closes its side keeps the drain busy: redix
    // lingers for its FIN after the last event.
    let mut stuck = SseClient::connect(server.addr, "stuck");
    assert_eq!(stuck.status, 200);
    server.signal(libc::SIGTERM);
    // The first signal has been taken once the stream is told to reconnect.
    let ev = stuck.next_message().expect("reconnect event");
    assert_eq!(ev.event.as_deref(), Some("reconnect"));
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
}

/// SIGTERM ends 100 SSE streams and 100 WebSockets spread over the drain
/// window, each told when to come back; every one gets its final event or
/// close code, and the process exits 0.
#[test]
fn sigterm_paces_the_drain_and_spreads_the_reconnects() {
    let mut server = Server::start(&[
        "--set",
        "shutdown.drain_ms=4000",
        "--set",
        "sse.retry_ms=200",
        "--set",
        "sse.retry_jitter_ms=400",
        "--set",
        "limits.sse_per_ip=1000",
        "--set",
        "limits.ws_per_ip=1000",
    ]);
    let sse: Vec<SseClient> = (0..100)
        .map(|_| SseClient::connect(server.addr, "d"))
        .collect();
    let ws: Vec<RawWs> = (0..100)
        .map(|_| RawWs::connect(server.addr, "/ws", &[]))
        .collect();
    wait_until("every stream", || {
        server.metric("redix_connections{transport=\"sse\"}") == 100.0
            && server.metric("redix_connections{transport=\"ws\"}") == 100.0
    });
    let t0 = std::time::Instant::now();
    server.signal(libc::SIGTERM);
    // Each client: when it was told to go plus the hint it got, in ms.
    let told: Vec<u64> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for mut c in sse {
            handles.push(s.spawn(move || {
                let ev = c.next_message().expect("the reconnect event");
                assert_eq!(ev.event.as_deref(), Some("reconnect"));
                t0.elapsed().as_millis() as u64 + ev.retry.expect("retry")
            }));
        }
        for mut c in ws {
            handles.push(s.spawn(move || {
                let close = c.read_non_ping().expect("the close frame");
                let (code, reason) = close.close_code();
                assert_eq!(code, 1012);
                let hint: serde_json::Value = serde_json::from_str(&reason).expect("a JSON reason");
                t0.elapsed().as_millis() as u64 + hint["retry"].as_u64().expect("retry")
            }));
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let status = server.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", server.logs());
    let (first, last) = (told.iter().min().unwrap(), told.iter().max().unwrap());
    let mut buckets = [0usize; 10];
    for t in &told {
        buckets[((*t as usize) * 10 / 4600).min(9)] += 1;
    }
    println!(
        "reconnect times told over a 4000 ms drain: {first}..{last} ms; per 460 ms: {buckets:?}"
    );
    assert_eq!(told.len(), 200, "every client got its final word");
    // Spread over most of the window (the pace covers its first 3/4),
    // not bunched at its start.
    assert!(last - first > 2000, "{first}..{last}");
    assert!(
        buckets.iter().filter(|n| **n > 0).count() >= 6,
        "{buckets:?}"
    );
}

#[test]
fn sighup_reloads_api_keys_and_limits_and_keeps_serving() {
    let dir = std::env::temp_dir().join(format!("redix-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("redix.toml");
    std::fs::write(
        &path,
        "[auth]\nkeys = [\"old\"]\n[limits]\nsse_per_ip = 1\n",
    )
    .unwrap();
    // REDIX_LOG unset: the configured log level applies, and reloads.
    let server =
        Server::start_with_env(&["--config", path.to_str().unwrap()], &[("REDIX_LOG", "")]);
    let publish_with = |key: &str| {
        let header = format!("Authorization: Bearer {key}");
        request(
            server.addr,
            "POST",
            "/api/publish",
            &[&header],
            r#"{"channel":"h","data":1}"#,
        )
        .0
    };
    assert_eq!((publish_with("old"), publish_with("new")), (200, 401));
    let _held = SseClient::connect(server.addr, "h");
    assert_eq!(SseClient::connect(server.addr, "h").status, 429);

    // A broken file is refused and the running configuration stays.
    std::fs::write(&path, "[auth]\nkeys = 7\n").unwrap();
    server.signal(libc::SIGHUP);
    wait_until("refusal logged", || {
        server.logs().contains("keeping the running configuration")
    });
    assert_eq!(publish_with("old"), 200);

    std::fs::write(
        &path,
        "log_level = \"debug\"\n[auth]\nkeys = [\"new\"]\n[limits]\nsse_per_ip = 2\n",
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    // The limits are applied after the keys: a second stream admitted means
    // the whole reload is in.
    wait_until("limit raised to 2", || {
        SseClient::connect(server.addr, "h").status == 200
    });
    assert_eq!((publish_with("old"), publish_with("new")), (401, 200));
    wait_until("the new log level", || {
        server.logs().contains("log level now DEBUG")
    });
    let _ = std::fs::remove_dir_all(&dir);
}
