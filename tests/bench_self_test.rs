//! The benches' parsers, histogram and formatting, without a network: what `cargo bench
//! --bench load -- --self-test` used to check, as ordinary tests. The modules are the
//! benches' own files, included by path (they are leaf modules: std and external crates).

// Each bench module below is used here only in part (the rest serves the benches).
#[allow(dead_code)] // only part of the module is tested
#[path = "../benches/load/attack_figs.rs"]
mod attack_figs;
#[allow(dead_code)] // only part of the module is tested
#[path = "../benches/load/event.rs"]
mod event;
#[allow(dead_code)] // only part of the module is tested
#[path = "../benches/load/hist.rs"]
mod hist;
#[allow(dead_code)] // only part of the module is tested
#[path = "../benches/support/http.rs"]
mod http;
#[allow(dead_code)] // only part of the module is tested
#[path = "../benches/load/jobs_figs.rs"]
mod jobs_figs;
#[allow(dead_code)] // only part of the module is tested
#[path = "../benches/load/jobs_park_figs.rs"]
mod jobs_park_figs;
#[path = "../benches/load/plan.rs"]
mod plan;
#[allow(dead_code)] // only part of the module is tested
#[path = "../benches/support/report.rs"]
mod report;
#[allow(dead_code)] // only part of the module is tested
#[path = "../benches/support/ws.rs"]
mod ws;

use std::sync::Arc;

use event::{event_json, find_nl, for_each_t, on_ws_message, on_ws_message_t, parse_t, SseStream};
use hist::{Histogram, Tally};
use plan::{parse_sub_rate, SubRate};

// ---- histogram ------------------------------------------------------------------------------

#[test]
fn histogram_buckets_are_contiguous_and_narrow() {
    // every value falls in its bucket; buckets are contiguous and ≤ 1/32 of their low end wide
    for v in (0..200_000u64).chain((1..40).map(|k| (1u64 << k) + 12345)) {
        let i = Histogram::index(v);
        let up = Histogram::upper(i);
        let lo = if i == 0 {
            0
        } else {
            Histogram::upper(i - 1) + 1
        };
        assert!(lo <= v && v <= up, "{v} outside its bucket {lo}..={up}");
        assert!(
            (up - lo) as f64 <= lo as f64 / 32.0 + 1.0,
            "bucket {lo}..={up} too wide"
        );
    }
}

#[test]
fn histogram_percentiles() {
    let mut h = Histogram::new();
    for v in 1..=10_000u64 {
        h.record(v);
    }
    assert!(
        (5000..=5160).contains(&h.percentile(50.0)),
        "p50 {}",
        h.percentile(50.0)
    );
    assert!(
        (9900..=10_000).contains(&h.percentile(99.0)),
        "p99 {}",
        h.percentile(99.0)
    );
    assert_eq!(h.max, 10_000);
}

// ---- the event's "t" and the command line ------------------------------------------------------

#[test]
fn parse_t_finds_the_stamp() {
    let redix =
        br#"data: {"type":"message","channel":"bench","id":"17","data":{"t":123,"pad":"xx"}}"#;
    assert_eq!(parse_t(redix), Some(123));
    assert_eq!(parse_t(br#"data: {"type":"x"}"#), None);
    assert_eq!(parse_t(b"data:"), None);
    // Redis stream ids (`ms-n`) hold colons and digits before the stamp
    let redis = br#"data: {"type":"message","channel":"bench","id":"1732412345678-3","data":{"t":9,"pad":"x"}}"#;
    assert_eq!(parse_t(redis), Some(9));
    // nchan: the object as published, a space after the colon, a colon in the pad
    assert_eq!(parse_t(br#"data: {"t": 42,"pad":"x:y"}"#), Some(42));
    assert_eq!(parse_t(br#"data:{"a":1,"t":7}"#), Some(7));
}

#[test]
fn plan_sub_rate() {
    let want = |subs, rate| Ok(SubRate { subs, rate });
    assert_eq!(parse_sub_rate("10000x100"), want(10_000, 100.0));
    assert_eq!(parse_sub_rate("1000X0.5"), want(1000, 0.5));
    assert!(parse_sub_rate("1000").is_err());
    assert!(parse_sub_rate("0x20").is_err());
    assert!(parse_sub_rate("10x-1").is_err());
}

#[test]
fn find_nl_every_position() {
    for k in 0..40 {
        let mut v = vec![b'a'; 40];
        v[k] = b'\n';
        assert_eq!(find_nl(&v), Some(k));
    }
    assert_eq!(find_nl(b"abcdefghijklmnop"), None);
}

// ---- SSE ----------------------------------------------------------------------------------------

/// `retry:`, a comment, three events (t = 1e6, 2e6, 3e6) and a fourth with CRLF line ends.
fn sse_body(id_of: &dyn Fn(u64) -> String) -> Vec<u8> {
    let mut body = b"retry: 3000\n\n: ping\n\n".to_vec();
    for (n, t) in [(1u64, 1_000_000u64), (2, 2_000_000), (3, 3_000_000)] {
        let id = id_of(n);
        body.extend_from_slice(
            format!("id: {id}\nevent: message\ndata: {{\"type\":\"message\",\"channel\":\"bench\",\"id\":\"{id}\",\"data\":{{\"t\":{t},\"pad\":\"xx\"}}}}\n\n").as_bytes(),
        );
    }
    body.extend_from_slice(
        format!("id: {}\r\ndata: {{\"t\":4000000}}\r\n\r\n", id_of(4)).as_bytes(),
    );
    body
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in body.chunks(7) {
        out.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Feeds `stream` split in two at `split`, each half in 1-byte or 4 KiB pieces.
fn feed_split(stream: &[u8], split: usize, feed: &mut dyn FnMut(&[u8]) -> Result<(), String>) {
    for piece in [&stream[..split], &stream[split..]] {
        for tiny in piece.chunks(if split.is_multiple_of(3) { 1 } else { 4096 }) {
            feed(tiny).unwrap_or_else(|e| panic!("split at {split}: {e}"));
        }
    }
}

/// t=1e6 is before pub_start → stale; 2e6, 3e6, 4e6 → latencies 3000, 2000, 1000 µs.
fn assert_three_deliveries(loc: &Tally, split: usize) {
    assert_eq!(loc.stale, 1, "split at {split}");
    assert_eq!(loc.events, 3, "split at {split}");
    assert_eq!(loc.hist.max, 3000, "split at {split}");
    assert_eq!(loc.hist.sum, 6000, "split at {split}");
}

fn sse_every_split(stream: &[u8], nodes: usize) {
    for split in 1..stream.len() {
        let mut s = SseStream::default();
        let mut loc = Tally::new(nodes, 1_500_000, 5_000_000);
        loc.node = nodes - 1;
        feed_split(stream, split, &mut |b| s.feed(b, &mut |t| loc.delivery(t)));
        assert!(s.retry_seen, "split at {split}");
        assert_three_deliveries(&loc, split);
        // per node only with several nodes, and then on the connection's node
        match nodes {
            1 => assert!(loc.node_hist.is_empty()),
            _ => assert!(loc.node_hist[0].n == 0 && loc.node_hist[1].sum == 6000),
        }
    }
}

const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";

#[test]
fn sse_plain_every_split() {
    sse_every_split(&[SSE_HEAD, &sse_body(&|n| n.to_string())].concat(), 1);
}

#[test]
fn sse_chunked_every_split() {
    sse_every_split(&chunked(&sse_body(&|n| n.to_string())), 1);
}

#[test]
fn sse_redis_stream_ids_node_b_of_2_every_split() {
    let body = sse_body(&|n| format!("1732412345678-{n}"));
    sse_every_split(&[SSE_HEAD, &body].concat(), 2);
}

#[test]
fn sse_event_slow_noticed() {
    let mut s = SseStream::default();
    let mut none = |_| {};
    assert!(s
        .feed(b"HTTP/1.1 200 OK\r\n\r\nretry: 10\n\n", &mut none)
        .is_ok());
    assert!(!s.slow);
    let slow = b"id: 17-0\nevent: slow\ndata: {\"reason\":\"slow consumer\"}\n\n";
    assert!(s.feed(slow, &mut none).is_ok());
    assert!(s.slow);
}

#[test]
fn sse_non_200_rejected() {
    let mut s = SseStream::default();
    assert!(s
        .feed(b"HTTP/1.1 429 Too Many Requests\r\n\r\n", &mut |_| {})
        .is_err());
}

// ---- WebSocket ----------------------------------------------------------------------------------

fn server_frame(fin: bool, op: u8, p: &[u8], long: bool) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 | op } else { op }];
    if long {
        f.push(127);
        f.extend_from_slice(&(p.len() as u64).to_be_bytes());
    } else if p.len() < 126 {
        f.push(p.len() as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(p.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(p);
    f
}

/// (opcode, unmasked payload) of every client frame; None if one is not masked or not final.
fn client_frames(mut b: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut v = Vec::new();
    while let Some((hl, len)) = ws::frame_header(b) {
        if b[1] & 0x80 == 0 || b[0] & 0x80 == 0 {
            return None;
        }
        let mask = &b[hl..hl + 4];
        let p = &b[hl + 4..hl + 4 + len as usize];
        v.push((
            b[0] & 0x0f,
            p.iter().enumerate().map(|(i, x)| x ^ mask[i & 3]).collect(),
        ));
        b = &b[hl + 4 + len as usize..];
    }
    b.is_empty().then_some(v)
}

const SUBSCRIBE: &[u8] = br#"{"type":"subscribe","channel":"bench"}"#;

fn new_client() -> ws::Client {
    let cfg = Arc::new(ws::Config {
        path: "/ws".into(),
        host: "x".into(),
        subscribe: Some(SUBSCRIBE.to_vec()),
    });
    let mut c = ws::Client::new(cfg, 42);
    c.reset();
    c
}

/// Feeds `data` as load's connections do: text messages carry a "t" or the `subscribed` ack.
fn ws_feed(
    c: &mut ws::Client,
    data: &[u8],
    loc: &mut Tally,
    acked: &mut bool,
) -> Result<(), String> {
    c.feed(data, &mut |m| {
        on_ws_message(m, &mut |t| loc.delivery(t), acked)
    })
}

fn switching(accept: &str) -> Vec<u8> {
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").into_bytes()
}

/// The ack, a ping, four events (7-, 16- and 64-bit lengths; the last fragmented around a
/// second ping), an unsolicited pong. Redis-mode ids (`ms-n` strings).
fn ws_frames() -> Vec<u8> {
    let msg = |t: u64, pad: usize| {
        format!(
            r#"{{"type":"message","channel":"bench","id":"{}-{}","data":{{"t":{t},"pad":"{}"}}}}"#,
            t / 1000,
            t % 7,
            "x".repeat(pad)
        )
        .into_bytes()
    };
    let mut f = server_frame(
        true,
        1,
        br#"{"type":"subscribed","channel":"bench"}"#,
        false,
    );
    f.extend(server_frame(true, 9, b"p1", false));
    f.extend(server_frame(true, 1, &msg(1_000_000, 10), false));
    f.extend(server_frame(true, 1, &msg(2_000_000, 200), false));
    f.extend(server_frame(true, 1, &msg(3_000_000, 5), true));
    let m4 = msg(4_000_000, 30);
    f.extend(server_frame(false, 1, &m4[..20], false));
    f.extend(server_frame(true, 9, b"p2", false));
    f.extend(server_frame(false, 0, &m4[20..40], false));
    f.extend(server_frame(true, 0, &m4[40..], false));
    f.extend(server_frame(true, 0xA, b"", false));
    f
}

#[test]
fn ws_every_split_and_masked_replies() {
    let frames = ws_frames();
    for split in 1..frames.len() + 60 {
        let mut c = new_client();
        let stream = [switching(&c.accept), frames.clone()].concat();
        let split = split.min(stream.len() - 1);
        let mut loc = Tally::new(1, 1_500_000, 5_000_000);
        let mut acked = false;
        feed_split(&stream, split, &mut |b| {
            ws_feed(&mut c, b, &mut loc, &mut acked)
        });
        assert!(acked && c.upgraded(), "split at {split}");
        assert_three_deliveries(&loc, split);
        let want = vec![
            (1, SUBSCRIBE.to_vec()),
            (0xA, b"p1".to_vec()),
            (0xA, b"p2".to_vec()),
        ];
        assert_eq!(client_frames(&c.out), Some(want), "split at {split}");
    }
}

#[test]
fn ws_bad_accept_rejected() {
    let mut c = new_client();
    let mut loc = Tally::new(1, 0, 0);
    let head = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n";
    assert!(ws_feed(&mut c, head, &mut loc, &mut false).is_err());
}

/// A client past its `101` (each with its own key).
fn open_client(loc: &mut Tally) -> ws::Client {
    let mut c = new_client();
    let head = switching(&c.accept);
    ws_feed(&mut c, &head, loc, &mut false).expect("101 accepted");
    c
}

#[test]
fn ws_close_and_masked_frames_rejected() {
    let mut loc = Tally::new(1, 0, 0);
    let mut c = open_client(&mut loc);
    let close = ws_feed(
        &mut c,
        &server_frame(true, 8, b"\x03\xe9idle timeout", false),
        &mut loc,
        &mut false,
    );
    assert!(matches!(close, Err(e) if e.contains("1001 idle timeout")));
    assert!(!c.slow);
    let mut c = open_client(&mut loc);
    let slow = ws_feed(
        &mut c,
        &server_frame(true, 8, b"\x0f\xa8slow", false),
        &mut loc,
        &mut false,
    );
    assert!(slow.is_err() && c.slow, "4008 is a slow-consumer close");
    let mut c = open_client(&mut loc);
    assert!(ws_feed(&mut c, &[0x81, 0x81, 1, 2, 3, 4, 5], &mut loc, &mut false).is_err());
    let refused = b"HTTP/1.1 426 Upgrade Required\r\n\r\n";
    assert!(ws_feed(&mut new_client(), refused, &mut loc, &mut false).is_err());
}

// ---- the publisher ------------------------------------------------------------------------------

#[test]
fn publish_response_framing() {
    let r = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let first = http::parse_response(r, false);
    assert!(matches!(first, Some(Ok(x)) if x.len == 50 && x.status == 200 && !x.close));
    let second = http::parse_response(&r[50..], false);
    assert!(matches!(second, Some(Ok(x)) if x.len == r.len() - 50 && x.status == 201 && !x.close));
    assert!(http::parse_response(&r[..49], false).is_none());
}

#[test]
fn publish_response_close() {
    let r = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    assert!(matches!(http::parse_response(r, false), Some(Ok(x)) if x.status == 200 && x.close));
}

#[test]
fn redix_publish_body() {
    let t = 1_763_000_000_000_000_000u64;
    let body = http::publish_body("bench", &event_json(t, 100));
    let req = http::post_json("127.0.0.1:1", "/api/publish", &body);
    let text = String::from_utf8_lossy(&req).into_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(v["channel"], "bench");
    assert_eq!(v["data"]["t"], t);
    assert_eq!(v["data"].to_string().len(), 100);
}

// ---- formatting ---------------------------------------------------------------------------------

#[test]
fn thousands_and_ms() {
    assert_eq!(report::thousands(0.0), "0");
    assert_eq!(report::thousands(999.4), "999");
    assert_eq!(report::thousands(1234567.8), "1,234,568");
    assert_eq!(report::thousands(-12345.0), "-12,345");
    assert_eq!(report::ms(1234), "1.23");
    assert_eq!(report::round(2.3456, 2), 2.35);
}

// ---- the pipelining attacker's figures and the acceptance checks ------------------------------

use attack_figs::{
    checks, compare_table, pct_counting_lost, pipeline_buf, probe_line, request,
    requests_completed, AttackFigs, Probe, ProbeOutcome, ProbeTally, Side,
};

#[test]
fn attacker_pipeline_is_whole_requests() {
    let req = request("/metrics/prom");
    assert_eq!(req, b"GET /metrics/prom HTTP/1.1\r\nHost: x\r\n\r\n");
    for min in [0, 1, req.len() - 1, req.len(), req.len() + 1, 64 * 1024] {
        let buf = pipeline_buf(&req, min);
        assert!(buf.len() >= min.max(1), "{min}");
        assert_eq!(buf.len() % req.len(), 0, "{min}");
        assert!(buf.chunks(req.len()).all(|c| c == req.as_slice()));
    }
}

#[test]
fn attacker_counts_requests_over_any_write_sizes() {
    let req_len = 44u64;
    for step in [1u64, 7, 43, 44, 45, 1000, 65_536] {
        let (mut sent, mut done) = (0u64, 0u64);
        while sent < 100_000 {
            done += requests_completed(sent, step, req_len);
            sent += step;
        }
        assert_eq!(done, sent / req_len, "writes of {step}");
    }
}

fn probe(outcome: ProbeOutcome, lat_us: u64) -> Probe {
    Probe {
        at_ms: 0,
        outcome,
        lat_us,
    }
}

#[test]
fn readyz_tally() {
    let ps = [
        probe(ProbeOutcome::Status(200), 900),
        probe(ProbeOutcome::Status(503), 1200),
        probe(ProbeOutcome::Timeout, 2_000_500),
        probe(ProbeOutcome::Error, 50),
        probe(ProbeOutcome::Status(200), 700),
    ];
    let t = ProbeTally::of(&ps);
    let want = ProbeTally {
        ok: 2,
        non_200: 2,
        timeouts: 1,
        max_lat_us: 2_000_500,
    };
    assert_eq!(t, want);
    assert!(!t.always_200());
    assert!(ProbeTally::of(&ps[4..]).always_200());
    assert!(!ProbeTally::of(&[]).always_200(), "no probe is no evidence");
}

/// A pass: RSS before/peak in KiB, probes all 200 unless `readyz` says otherwise.
fn figs(before: u64, peak: u64, readyz: ProbeOutcome) -> AttackFigs {
    AttackFigs {
        attacking: true,
        rss_before_kib: before,
        rss_peak_kib: peak,
        rss_end_kib: peak,
        rss_cap_kib: 1 << 20,
        probes: vec![probe(ProbeOutcome::Status(200), 500), probe(readyz, 800)],
        ..AttackFigs::default()
    }
}

/// 1,000 expected; p99 of what arrived `p99_us`; over 1 % lost makes the p99 of all "never".
fn side(p99_us: u64, received: u64, f: &AttackFigs) -> Side<'_> {
    Side {
        p50_us: p99_us / 2,
        p99_us,
        p99_all_us: pct_counting_lost(99.0, received, 1000).map(|_| p99_us),
        received,
        expected: 1000,
        figs: f,
    }
}

#[test]
fn acceptance_checks() {
    let ok = ProbeOutcome::Status(200);
    let base = figs(11_000, 11_500, ok);
    let b = side(4000, 1000, &base);
    let pass = |f: &AttackFigs, p99, received| -> Vec<bool> {
        checks(&b, &side(p99, received, f))
            .iter()
            .map(|c| c.pass)
            .collect()
    };
    let good = figs(11_000, 11_000 + 16 * 1024 - 1, ok);
    assert_eq!(pass(&good, 8000, 1000), [true, true, true]);
    let grew = figs(11_000, 11_000 + 16 * 1024, ok);
    assert_eq!(pass(&grew, 8000, 1000), [false, true, true]);
    assert_eq!(pass(&good, 8001, 1000), [true, false, true]);
    assert_eq!(pass(&good, 100, 0), [true, false, true], "nothing received");
    assert_eq!(
        pass(&good, 100, 500),
        [true, false, true],
        "half lost, fast p99"
    );
    assert_eq!(pass(&good, 100, 990), [true, true, true], "1 % lost");
    let slow = figs(11_000, 11_000, ProbeOutcome::Timeout);
    assert_eq!(pass(&slow, 4000, 1000), [true, true, false]);
    let e503 = figs(11_000, 11_000, ProbeOutcome::Status(503));
    assert_eq!(pass(&e503, 4000, 1000), [true, true, false]);
    let mut late = figs(11_000, 11_000, ok);
    late.rss_after_kib = 11_000 + 16 * 1024;
    assert_eq!(
        pass(&late, 4000, 1000),
        [false, true, true],
        "grew after the attack"
    );
    let mut guarded = figs(11_000, 11_000, ok);
    guarded.guard = Some((3.0, 1 << 21));
    assert_eq!(pass(&guarded, 4000, 1000), [false, true, true]);
}

#[test]
fn comparison_table_verdict() {
    let ok = ProbeOutcome::Status(200);
    let (base, good, bad) = (
        figs(11_000, 11_500, ok),
        figs(11_000, 12_000, ok),
        figs(11_000, 500_000, ProbeOutcome::Timeout),
    );
    let (t, all) = compare_table("t", &side(4000, 1000, &base), &side(5000, 1000, &good));
    assert!(all && t.ends_with("verdict: PASS\n"), "{t}");
    let (t, all) = compare_table("t", &side(4000, 1000, &base), &side(50_000, 600, &bad));
    assert!(!all && t.ends_with("verdict: FAIL\n"), "{t}");
    assert_eq!(t.matches("| FAIL |").count(), 3, "{t}");
    assert!(t.contains("600 / 1,000 (400 lost = 40.0 %)"), "{t}");
    assert!(t.contains("| ∞ (40.0 % lost) | FAIL |"), "{t}");
}

#[test]
fn readyz_line_and_guard_text() {
    let ps = [
        probe(ProbeOutcome::Status(200), 1234),
        probe(ProbeOutcome::Timeout, 2_000_100),
        probe(ProbeOutcome::Error, 10),
        probe(ProbeOutcome::Status(503), 40_000),
    ];
    assert_eq!(probe_line(&ps), "200/1.2 T E 503/40.0");
    let mut f = figs(11_000, 1_100_000, ProbeOutcome::Timeout);
    f.guard = Some((4.5, 1_100_000));
    f.rss_series_kib = vec![11 * 1024, 100 * 1024, 500 * 1024, 1_100_000];
    let t = attack_figs::text(&f);
    assert!(t.contains("ATTACK STOPPED      at 4.5 s"), "{t}");
    assert!(t.contains("RSS each second     11 500 MiB"), "{t}");
    let j = attack_figs::json(&f);
    assert_eq!(j["stopped_by_guard"], true);
    assert_eq!(j["readyz"]["timeouts"], 1);
}

#[test]
fn p99_counting_lost_deliveries() {
    assert_eq!(pct_counting_lost(99.0, 1000, 1000), Some(99.0));
    let q = pct_counting_lost(99.0, 990, 1000).unwrap();
    assert!((q - 100.0).abs() < 1e-9, "{q}");
    assert_eq!(pct_counting_lost(99.0, 989, 1000), None);
    assert_eq!(pct_counting_lost(99.0, 0, 1000), None);
    assert_eq!(pct_counting_lost(99.0, 0, 0), None);
    // more received than expected (duplicates): a lower rank of what arrived
    assert_eq!(pct_counting_lost(99.0, 2000, 1000), Some(49.5));
}

// ---- market trades: every "t" of an event, in ms ----------------------------------------------

/// A redix market event with two trades of one symbol (t in ms since the epoch).
const TRADES: &str = r#"{"type":"message","channel":"trades:SYM001","id":"9","data":[{"s":"SYM001","p":12.5,"t":1700000000001,"v":3,"c":["1"]},{"s":"SYM001","p":12.51,"t":1700000000002,"v":0,"c":[]}]}"#;

#[test]
fn market_every_trade_is_a_delivery_in_ms() {
    let mut ts = Vec::new();
    for_each_t(TRADES.as_bytes(), &mut |t| ts.push(t));
    assert_eq!(ts, [1_700_000_000_001, 1_700_000_000_002]);
    // SSE: both trades, counted at the data line; latency from ms (now = …004 ms)
    let mut s = SseStream::default();
    s.every_t = true;
    let mut loc = Tally::new(1, 0, 1_700_000_000_004 * 1_000_000);
    loc.t_unit_ns = 1_000_000;
    let body = format!("HTTP/1.1 200 OK\r\n\r\nretry: 10\n\nid: 9\ndata: {TRADES}\n\n");
    s.feed(body.as_bytes(), &mut |t| loc.delivery(t)).unwrap();
    assert_eq!((loc.events, loc.hist.max, loc.hist.sum), (2, 3000, 5000));
    // WebSocket: every trade with every_t, the first only without
    let (mut n, mut acked) = (0, false);
    on_ws_message_t(TRADES.as_bytes(), true, &mut |_| n += 1, &mut acked).unwrap();
    assert_eq!(n, 2);
    on_ws_message(TRADES.as_bytes(), &mut |_| n += 1, &mut acked).unwrap();
    assert_eq!(n, 3);
}

// ---- the box bench's histogram (crosses process boundaries as sparse buckets) ---------------

#[path = "bench_self_test/box_hist.rs"]
mod box_hist_checks;

// ---- jobs: the summarize request, its answers, the acceptance checks (in a file of its own) ---

#[path = "bench_self_test/jobs.rs"]
mod jobs_checks;

// ---- the publish bench's Redis client (in a file of its own) -----------------------------------

#[path = "bench_self_test/publish.rs"]
mod publish_checks;
