//! Exhaustion: descriptors and the header deadline. Many real sockets
//! against a real server; nothing may crash, spin or stall the others, and
//! every descriptor comes back.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// RLIMIT_NOFILE lowered to 256 (connection cap 256 − 128 = 128) and 3× as
/// many clients: accepting pauses at the cap instead of spinning (CPU
/// stays low while clients wait in the backlog), nothing crashes, and when
/// clients leave the waiting ones are served and fds return to baseline.
#[test]
fn three_times_more_clients_than_descriptors_pause_accepting_without_spinning() {
    let server = Server::start_with_nofile(&["--set", "limits.http_per_ip=100000"], 256);
    let baseline = server.fd_count();
    let mut watch = HttpConn::connect(server.addr);
    // 3 × 256 clients: the first 127 are accepted, the rest wait.
    let clients: Vec<TcpStream> = (0..768)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    wait_until("the cap", || server.fd_count() >= baseline + 128);
    // Over a measured second the server does not spin on accept(2).
    let (cpu0, t0) = (server.cpu_ms(), Instant::now());
    while t0.elapsed() < Duration::from_secs(1) {
        std::thread::park_timeout(Duration::from_millis(100));
    }
    let busy = (server.cpu_ms() - cpu0) as f64 / t0.elapsed().as_millis() as f64;
    assert!(
        busy < 0.25,
        "accepting spun: {:.0} % of a core",
        busy * 100.0
    );
    // Clients leave: the ones waiting in the backlog are served in turn.
    drop(clients);
    wait_until("everyone served and gone", || {
        watch.metric("redix_connections{transport=\"http\"}") == 1.0
            && watch.metric("redix_connections{transport=\"closing\"}") == 0.0
    });
    assert!(watch.metric("redix_accept_pauses_total{reason=\"conn_cap\"}") >= 1.0);
    assert_eq!(get(server.addr, "/healthz").0, 200);
    drop(watch);
    wait_until("fds back at baseline", || server.fd_count() == baseline);
}

/// Slowloris: 5,000 connections that trickle a request one byte a second
/// are all closed at the header deadline; meanwhile a subscriber gets its
/// events and requests are answered, and every fd comes back.
#[test]
fn five_thousand_slowloris_connections_end_at_the_header_deadline() {
    let server = Server::start(&[
        "--set",
        "limits.http_per_ip=100000",
        "--set",
        "limits.header_timeout_ms=1500",
    ]);
    let baseline = server.fd_count();
    let mut slow: Vec<TcpStream> = (0..5000)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    let mut sse = SseClient::connect(server.addr, "alive");
    assert_eq!(sse.status, 200);
    let request = b"GET /healthz HTTP/1.1\r\nHost: slow\r\n\r\n";
    let mut closed = vec![false; slow.len()];
    for (i, byte) in request.iter().enumerate() {
        if closed.iter().all(|c| *c) {
            break;
        }
        for (s, done) in slow.iter_mut().zip(closed.iter_mut()) {
            *done |= s.write_all(&[*byte]).is_err();
        }
        // Others are served while the trickle goes on.
        let id = publish(server.addr, "alive", &format!("{i}"));
        assert_eq!(sse.next_message().and_then(|m| m.id), Some(id.to_string()));
        std::thread::park_timeout(Duration::from_millis(1000));
    }
    // Each slow connection got a 408 or was closed.
    for s in slow.iter_mut() {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    drop(slow);
    drop(sse);
    wait_until("fds back at baseline", || server.fd_count() == baseline);
}
