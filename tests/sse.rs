//! SSE streams against the real server: limits, fan-out over every reactor,
//! cleanup of departed clients, slow consumers.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;

#[test]
fn twenty_five_streams_from_one_ip_give_twenty_and_five_429() {
    let server = Server::start(&[]);
    let clients: Vec<SseClient> = (0..25)
        .map(|_| SseClient::connect(server.addr, "limits"))
        .collect();
    let ok = clients.iter().filter(|c| c.status == 200).count();
    let refused: Vec<&SseClient> = clients.iter().filter(|c| c.status == 429).collect();
    assert_eq!((ok, refused.len()), (20, 5));
    for c in &refused {
        assert!(c.head.contains("Retry-After: "), "{}", c.head);
        assert!(c.head.contains("application/json"), "{}", c.head);
    }
    let first = clients.iter().find(|c| c.status == 200).unwrap();
    assert!(first.head.contains("Content-Type: text/event-stream\r\n"));
    assert!(first.head.contains("Cache-Control: no-cache\r\n"));
    assert!(first.head.contains("X-Accel-Buffering: no\r\n"));
    assert_eq!(
        server.metric("redix_connections_rejected_total{reason=\"ip_limit\"}"),
        5.0
    );
    // Slots come back when streams end.
    drop(clients);
    wait_until("slots released", || {
        server.metric("redix_ip_limiter_clients") == 0.0
    });
    assert_eq!(SseClient::connect(server.addr, "limits").status, 200);
}

#[test]
fn stream_starts_with_retry_and_heartbeats() {
    let server = Server::start(&[
        "--set",
        "sse.heartbeat_ms=200",
        "--set",
        "sse.retry_ms=1000",
        "--set",
        "sse.retry_jitter_ms=500",
    ]);
    let mut c = SseClient::connect(server.addr, "beat");
    let first = c.next_event().expect("retry");
    let retry = first.retry.expect("retry value");
    assert!((1000..=1500).contains(&retry), "retry {retry}");
    // A heartbeat is a comment line; read raw to see it.
    let mut line = String::new();
    loop {
        line.clear();
        std::io::BufRead::read_line(&mut c.reader, &mut line).expect("heartbeat");
        if line == ": ping\n" {
            break;
        }
    }
}

#[test]
fn publish_reaches_every_subscriber_on_every_reactor_once_in_order() {
    let server = Server::start(&["--sse-per-ip", "200"]);
    let mut subs: Vec<SseClient> = (0..60)
        .map(|_| SseClient::connect(server.addr, "news,other"))
        .collect();
    assert!(subs.iter().all(|c| c.status == 200));
    wait_until("60 streams", || {
        server.metric("redix_connections{transport=\"sse\"}") == 60.0
    });
    let per_worker = [
        server.metric("redix_worker_connections{worker=\"0\"}"),
        server.metric("redix_worker_connections{worker=\"1\"}"),
    ];
    assert!(
        per_worker.iter().all(|n| *n > 0.0),
        "streams on both reactors: {per_worker:?}"
    );
    let mut publisher = Publisher::connect(server.addr);
    let ids: Vec<u64> = (0..200)
        .map(|i| {
            publisher.publish(
                if i % 2 == 0 { "news" } else { "other" },
                &format!(r#"{{"n":{i}}}"#),
            )
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase");
    for c in subs.iter_mut() {
        let got: Vec<(u64, u64)> = (0..200)
            .map(|_| {
                let ev = c.next_message().expect("event");
                assert_eq!(ev.event.as_deref(), Some("message"));
                let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
                let id: u64 = ev.id.unwrap().parse().unwrap();
                assert_eq!(v["id"].as_str().unwrap(), id.to_string());
                (id, v["data"]["n"].as_u64().unwrap())
            })
            .collect();
        let expected: Vec<(u64, u64)> = ids.iter().copied().zip(0..200).collect();
        assert_eq!(got, expected);
    }
    // Nothing more: the next thing on every stream is the next publish.
    let last = publisher.publish("news", r#""end""#);
    for c in subs.iter_mut() {
        assert_eq!(c.next_message().unwrap().id, Some(last.to_string()));
    }
}

#[test]
fn a_thousand_streams_that_leave_return_fds_to_baseline() {
    // A long header timeout: the one keep-alive connection below idles
    // through the rounds and must not be closed (and counted) meanwhile.
    let server = Server::start(&[
        "--sse-per-ip",
        "2000",
        "--set",
        "limits.header_timeout_ms=120000",
    ]);
    // Before any client: the startup line comes after every fd redix keeps.
    let baseline = server.fd_count();
    // Every look at the server goes over this one connection, so the
    // counters and the fd report below see the thousand streams and it.
    let mut admin = HttpConn::connect(server.addr);
    let before = admin.fds();
    // The baseline as redix sees it: the fds counted from outside, plus
    // this connection and the `/proc/self/fd` listing the report reads.
    assert_eq!(before["open"], baseline + 2, "at start: {before}");
    assert_eq!(before["owned"]["connections"], 1, "at start: {before}");
    assert_eq!(before["owned"]["listeners"], 2, "at start: {before}");
    assert_eq!(before["unaccounted"], 0, "at start: {before}");
    for round in 0..10 {
        let batch: Vec<SseClient> = (0..100)
            .map(|_| SseClient::connect(server.addr, "fd"))
            .collect();
        assert!(batch.iter().all(|c| c.status == 200), "round {round}");
        for (i, c) in batch.into_iter().enumerate() {
            if i % 2 == 0 {
                c.abort();
            } else {
                drop(c);
            }
        }
    }
    wait_until("fds back at baseline (plus the admin connection)", || {
        server.fd_count() == baseline + 1
    });
    wait_until("no open connections", || {
        admin.metric("redix_connections{transport=\"sse\"}") == 0.0
    });
    // Each of the thousand was accepted once and closed once, and exactly
    // the aborted half (RST) count as resets: the others closed with a FIN
    // and no unread bytes (the head and `retry:` come in one write).
    assert_eq!(admin.metric("redix_connections_accepted_total"), 1001.0);
    assert_eq!(admin.metric("redix_connections_closed_total"), 1000.0);
    assert_eq!(admin.metric("redix_peer_resets_total"), 500.0);
    assert_eq!(admin.metric("redix_ip_limiter_clients"), 0.0);
    // redix's own books: every fd accounted for, and the same fds, by kind
    // and TCP state, as before the first stream.
    let after = admin.fds();
    assert_eq!(after["unaccounted"], 0, "{after}");
    assert_eq!(
        after["owned"]["connections"], 1,
        "only the report's own: {after}"
    );
    assert_eq!(after, before, "the fd report is back at its baseline");
}

#[test]
fn a_stalled_client_is_cut_off_with_its_resume_id_while_fast_ones_get_everything() {
    const EVENTS: u64 = 400;
    const FAST: usize = 100;
    let server = Server::start(&[
        "--sse-per-ip",
        "200",
        "--set",
        "queue.max_events=200",
        "--set",
        "tcp.send_buffer=4096",
        "--set",
        "shutdown.linger_ms=15000",
    ]);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut slow = SseClient::connect_with(server.addr, "ticks", Some(sock));
    assert_eq!(slow.status, 200);
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..FAST).map(|_| AtomicU64::new(0)).collect());
    let readers: Vec<_> = (0..FAST)
        .map(|i| {
            let mut c = SseClient::connect(server.addr, "ticks");
            assert_eq!(c.status, 200);
            let progress = progress.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while (seen.len() as u64) < EVENTS {
                    let ev = c.next_message().expect("fast client event");
                    seen.push(ev.id.unwrap().parse::<u64>().unwrap());
                    progress[i].store(seen.len() as u64, Ordering::Release);
                }
                seen
            })
        })
        .collect();
    wait_until("all streams", || {
        server.metric("redix_connections{transport=\"sse\"}") == (FAST + 1) as f64
    });
    let pad = "x".repeat(1000);
    let mut publisher = Publisher::connect(server.addr);
    let mut ids = Vec::new();
    for n in 0..EVENTS {
        // Keep fast clients within 100 events of the publisher: they are
        // fast, not infinitely fast, and the queue cap is 200.
        wait_until("fast clients keep up", || {
            progress.iter().all(|p| p.load(Ordering::Acquire) + 100 > n)
        });
        ids.push(publisher.publish("ticks", &format!(r#"{{"n":{n},"pad":"{pad}"}}"#)));
    }
    for r in readers {
        assert_eq!(
            r.join().unwrap(),
            ids,
            "a fast client missed or reordered events"
        );
    }
    wait_until("slow disconnect", || {
        server.metric("redix_slow_disconnects_total") == 1.0
    });
    // The stalled client now reads what reached it: contiguous events, then
    // `event: slow` naming the last of them.
    let mut got = Vec::new();
    let last = loop {
        let ev = slow.next_event().expect("stream ends with event: slow");
        match ev.event.as_deref() {
            Some("message") => got.push(ev.id.unwrap().parse::<u64>().unwrap()),
            Some("slow") => break ev,
            _ => {}
        }
    };
    assert!(!got.is_empty() && got.len() < EVENTS as usize);
    assert_eq!(got[..], ids[..got.len()], "the slow client got a prefix");
    let data: serde_json::Value = serde_json::from_str(&last.data).unwrap();
    let resume = got.last().unwrap().to_string();
    assert_eq!(data["lastEventId"].as_str(), Some(resume.as_str()));
    assert_eq!(last.id.as_deref(), Some(resume.as_str()));
    assert!(slow.next_event().is_none(), "closed after event: slow");
    assert!(server.metric("redix_events_dropped_total{reason=\"queue_full\"}") >= 10.0);
}

#[test]
fn at_the_connection_cap_accepting_pauses_and_resumes_at_ninety_percent() {
    let server = Server::start(&[
        "--set",
        "limits.max_connections=20",
        "--set",
        "limits.sse_per_ip=50",
    ]);
    // One kept-alive connection to watch the server while it is full.
    let mut watch = HttpConn::connect(server.addr);
    let mut held: Vec<SseClient> = (0..19)
        .map(|_| SseClient::connect(server.addr, "cap"))
        .collect();
    assert!(held.iter().all(|c| c.status == 200));
    // The kernel completes the handshake; redix does not accept it yet.
    let waiting = std::thread::spawn({
        let addr = server.addr;
        move || SseClient::connect(addr, "cap").status
    });
    let paused = "redix_accept_pauses_total{reason=\"conn_cap\"}";
    wait_until("a pause at the cap", || watch.metric(paused) >= 1.0);
    assert!(!waiting.is_finished(), "served while at the cap");
    // 19 of 20 is above 90 %: still paused.
    held.truncate(18);
    let sse = "redix_connections{transport=\"sse\"}";
    wait_until("19 open", || watch.metric(sse) == 18.0);
    assert!(!waiting.is_finished(), "served above 90 % of the cap");
    // 18 of 20 is 90 %: accepting resumes.
    held.truncate(17);
    assert_eq!(waiting.join().unwrap(), 200);
}
