//! The jobs scenario's figures (`benches/load/jobs_figs.rs`, `jobs_park_figs.rs`), a module of
//! `bench_self_test` (a directory without `main.rs` is no test target of its own).

use crate::attack_figs::pct_counting_lost;
use crate::http;
use crate::jobs_figs::{classify, job_url, submit_checks, summarize_request, Answer, BurstFigs};
use crate::jobs_park_figs::{compare_table, park_checks, FanSide, ParkFigs};

#[test]
fn summarize_request_is_a_json_post() {
    let url = r#"https://jobs-bench.example/t/"q"/r1/c2/n3"#;
    for (wait, line) in [
        (Some(0), "POST /api/summarize?wait=0 HTTP/1.1"),
        (Some(10), "POST /api/summarize?wait=10 HTTP/1.1"),
        (None, "POST /api/summarize HTTP/1.1"),
    ] {
        let req = String::from_utf8(summarize_request("127.0.0.1:9", url, wait)).unwrap();
        let (head, body) = req.split_once("\r\n\r\n").unwrap();
        assert_eq!(head.lines().next(), Some(line));
        let cl = http::header_value(head, "content-length").unwrap();
        assert_eq!(cl.parse::<usize>().unwrap(), body.len());
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["url"], url);
    }
}

#[test]
fn job_urls_never_repeat() {
    let mut seen = std::collections::HashSet::new();
    for phase in ["wait0", "window"] {
        for round in 0..3 {
            for client in 0..12 {
                for seq in 0..3 {
                    assert!(seen.insert(job_url("t1", phase, round, client, seq)));
                }
            }
        }
    }
    assert!(job_url("t1", "wait0", 1, 23, 0).starts_with("https://"));
}

/// An answer as redix frames it: status, JSON body, Content-Length.
fn answer(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn classify_wire(status: u16, body: &str) -> Answer {
    let bytes = answer(status, body);
    let r = http::parse_response(&bytes, false).unwrap().unwrap();
    classify(r.status, &String::from_utf8_lossy(&bytes[r.body..r.len]))
}

#[test]
fn summarize_answers_classified() {
    let pending = r#"{"jobId":"j1","status":"pending","stream":"/api/ask?job=j1"}"#;
    assert_eq!(classify_wire(202, pending), Answer::Pending);
    let wrong_stream = r#"{"jobId":"j1","status":"pending","stream":"/api/ask?job=j2"}"#;
    assert!(
        matches!(classify_wire(202, wrong_stream), Answer::Other(w) if w.starts_with("202 with"))
    );
    let no_id = r#"{"status":"pending","stream":"/api/ask?job="}"#;
    assert!(matches!(classify_wire(202, no_id), Answer::Other(_)));
    let breaker =
        r#"{"error":{"code":"jobs_unavailable","message":"workers are not picking up jobs"}}"#;
    assert_eq!(
        classify_wire(503, breaker),
        Answer::Other("503 jobs_unavailable".into())
    );
    let summary = r#"{"url":"u","summary":"s","jobId":null,"cached":true}"#;
    assert!(matches!(classify_wire(200, summary), Answer::Other(w) if w.starts_with("200 {")));
    let long = "x".repeat(500);
    assert!(matches!(classify(500, &long), Answer::Other(w) if w.chars().count() < 100));
}

/// `n` answers, all 202 unless `other`, latencies `lat_us`.
fn burst(wait_s: Option<u32>, lat_us: &[u64], other: u64) -> BurstFigs {
    let mut f = BurstFigs::new(wait_s, lat_us.len(), 1);
    for (i, &us) in lat_us.iter().enumerate() {
        f.lat.record(us);
        match (i as u64) < other {
            true => f.tally.answer(Answer::Other("503 jobs_unavailable".into())),
            false => f.tally.answer(Answer::Pending),
        }
    }
    f
}

#[test]
fn submit_acceptance_checks() {
    let pass = |zero: &BurstFigs, window: Option<&BurstFigs>| -> Vec<bool> {
        submit_checks(zero, window, 2000)
            .iter()
            .map(|c| c.pass)
            .collect()
    };
    let fast: Vec<u64> = (1..=200).map(|i| i * 25).collect(); // p99 4,950 µs
    let slow: Vec<u64> = (1..=200).map(|i| i * 26).collect(); // p99 ~5,150 µs
    assert_eq!(pass(&burst(Some(0), &fast, 0), None), [true, true]);
    assert_eq!(pass(&burst(Some(0), &slow, 0), None), [true, false]);
    assert_eq!(pass(&burst(Some(0), &fast, 1), None), [false, true]);
    assert_eq!(
        pass(&burst(Some(0), &[], 0), None),
        [false, false],
        "nothing measured"
    );
    let on_time = burst(None, &[2_000_400, 2_012_000], 0);
    let early = burst(None, &[1_970_000, 2_012_000], 0);
    let zero = burst(Some(0), &fast, 0);
    assert_eq!(pass(&zero, Some(&on_time)), [true, true, true]);
    assert_eq!(pass(&zero, Some(&early)), [true, true, false]);
    let mut lost = burst(None, &[2_000_400], 0);
    lost.clients = 2; // one of two never answered
    lost.tally.error("1 request(s) unanswered".into());
    assert_eq!(pass(&zero, Some(&lost)), [true, true, false]);
}

fn fan(p99_us: u64, received: u64) -> FanSide {
    FanSide {
        p50_us: p99_us / 2,
        p99_us,
        p99_all_us: pct_counting_lost(99.0, received, 1000).map(|_| p99_us),
        received,
        expected: 1000,
        cpu_per_delivery_us: 7.0,
    }
}

/// 200 clients, in flight `avg` on every sample, `answers` 202s and `other` others.
fn parked(avg: usize, answers: u64, other: u64) -> ParkFigs {
    let mut p = ParkFigs::new(200, 10);
    for _ in 0..100 {
        p.sample(avg);
    }
    for _ in 0..answers {
        p.tally.answer(Answer::Pending);
    }
    for _ in 0..other {
        p.tally.answer(Answer::Other("408 request_timeout".into()));
    }
    p
}

#[test]
fn parked_acceptance_checks() {
    let base = fan(4000, 1000);
    let pass = |with: FanSide, p: &ParkFigs| -> Vec<bool> {
        park_checks(&base, &with, p)
            .iter()
            .map(|c| c.pass)
            .collect()
    };
    assert_eq!(
        pass(fan(8000, 1000), &parked(200, 400, 0)),
        [true, true, true]
    );
    assert_eq!(
        pass(fan(8001, 1000), &parked(200, 400, 0)),
        [true, true, false]
    );
    assert_eq!(
        pass(fan(100, 980), &parked(200, 400, 0)),
        [true, true, false],
        "2 % lost"
    );
    assert_eq!(
        pass(fan(4000, 1000), &parked(190, 400, 0)),
        [true, true, true],
        "95 %"
    );
    assert_eq!(
        pass(fan(4000, 1000), &parked(189, 400, 0)),
        [true, false, true]
    );
    assert_eq!(
        pass(fan(4000, 1000), &parked(200, 399, 1)),
        [false, true, true]
    );
    assert_eq!(
        pass(fan(4000, 1000), &ParkFigs::new(200, 10)),
        [true, false, true],
        "no sample"
    );
    let (t, ok) = compare_table("t", &base, &fan(4400, 1000), &parked(200, 400, 0));
    assert!(ok && t.ends_with("verdict: PASS\n"), "{t}");
    assert!(
        t.contains("p50 1.10×, p99 1.10×, CPU per delivery 1.00×"),
        "{t}"
    );
    assert!(
        t.contains("200.0 avg, min 200, max 200 (100 samples"),
        "{t}"
    );
    let (t, ok) = compare_table("t", &base, &fan(4400, 1000), &parked(200, 0, 3));
    assert!(
        !ok && t.contains("0 × 202 pending; 3 other; 0 errors (first other: 408 request_timeout)"),
        "{t}"
    );
}
