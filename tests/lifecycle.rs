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

#[test]
fn systemd_hears_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = std::env::temp_dir().join(format!("redix-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let path_str = path.to_str().unwrap();
    let mut server = Server::start_with_env(
        &[],
        &[("NOTIFY_SOCKET", path_str), ("WATCHDOG_USEC", "200000")],
    );
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    let mut recv_until = |what: &str, seen: &mut String| {
        while !seen.contains(what) {
            let n = sock.recv(&mut buf).expect("notification");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    };
    recv_until("READY=1", &mut seen);
    recv_until("WATCHDOG=1", &mut seen);
    server.signal(libc::SIGTERM);
    recv_until("STOPPING=1", &mut seen);
    assert!(server.wait_exit(Duration::from_secs(15)).success());
    let _ = std::fs::remove_dir_all(&dir);
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
    let server = Server::start(&["--config", path.to_str().unwrap()]);
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
        "[auth]\nkeys = [\"new\"]\n[limits]\nsse_per_ip = 2\n",
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    // The limits are applied after the keys: a second stream admitted means
    // the whole reload is in.
    wait_until("limit raised to 2", || {
        SseClient::connect(server.addr, "h").status == 200
    });
    assert_eq!((publish_with("old"), publish_with("new")), (401, 200));
    let _ = std::fs::remove_dir_all(&dir);
}
