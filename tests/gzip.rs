//! gzip-encoded SSE against the real server: decoded incrementally event by
//! event, compressed once per event for every subscriber, and a trailer
//! whose CRC checks out when the stream ends.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use flate2::bufread::GzDecoder;

type Decoded = BufReader<GzDecoder<BufReader<TcpStream>>>;

/// Opens a gzip stream and returns its head and a line reader over the
/// decoded body.
fn gzip_stream(addr: std::net::SocketAddr, channels: &str) -> (String, Decoded) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(s, "GET /api/stream?channels={channels} HTTP/1.1\r\nHost: t\r\nAccept-Encoding: br, gzip\r\n\r\n").unwrap();
    let mut raw = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        raw.read_line(&mut line).unwrap();
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    (head, BufReader::new(GzDecoder::new(raw)))
}

/// The next event's lines (without the blank line).
fn next_block(r: &mut Decoded) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended early");
        if line == "\n" {
            if !lines.is_empty() {
                return lines;
            }
            continue;
        }
        lines.push(line.trim_end().to_string());
    }
}

#[test]
fn gzip_streams_decode_event_by_event_and_share_one_compression() {
    let mut server = Server::start(&[
        "--set",
        "sse.retry_ms=100",
        "--set",
        "sse.retry_jitter_ms=0",
    ]);
    let (head, mut a) = gzip_stream(server.addr, "z");
    assert!(head.contains("Content-Encoding: gzip\r\n"), "{head}");
    assert!(head.contains("Vary: Accept-Encoding\r\n"));
    let (_, mut b) = gzip_stream(server.addr, "z");
    assert_eq!(next_block(&mut a), vec!["retry: 100"]);
    assert_eq!(next_block(&mut b), vec!["retry: 100"]);
    // Each event can be read before the next is published: every chunk is
    // flushed on its own.
    for n in 0..5 {
        let id = publish(server.addr, "z", &format!(r#"{{"n":{n}}}"#));
        for r in [&mut a, &mut b] {
            let block = next_block(r);
            assert_eq!(block[0], format!("id: {id}"));
            assert!(
                block[2].contains(&format!(r#""data":{{"n":{n}}}"#)),
                "{block:?}"
            );
        }
    }
    assert_eq!(
        server.metric("redix_sse_gzip_compressions_total"),
        5.0,
        "once per event, not per subscriber"
    );
    // A plain subscriber on the same channel gets plain bytes.
    let mut plain = SseClient::connect(server.addr, "z");
    assert!(!plain.head.contains("Content-Encoding"));
    let id = publish(server.addr, "z", "6");
    assert_eq!(plain.next_message().unwrap().id, Some(id.to_string()));
    next_block(&mut a);
    // Shutdown ends the gzip stream properly: reconnect, final block, a
    // trailer whose CRC and length match everything sent.
    server.signal(libc::SIGTERM);
    let mut rest = String::new();
    a.read_to_string(&mut rest).expect("valid gzip trailer");
    assert!(rest.contains("event: reconnect"), "{rest}");
    assert!(server.wait_exit(Duration::from_secs(15)).success());
}
