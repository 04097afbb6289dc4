//! Per-client limits on the endpoints that cost real work, in embedded
//! mode: new jobs are rate limited per client IP or per API key (one
//! budget for a key across IPs) with 429 and `Retry-After`; jobs in flight
//! are capped per client until they end, a summarize that joins a job is
//! not a new one, and the cap follows a reload; publishes are rate limited
//! per key; keyless clients on this machine are exempt; requests parked on
//! a reactor are capped.
//!
//! Different client IPs come from `X-Forwarded-For` with 127.0.0.1 as a
//! trusted proxy; without the header the client is this machine.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use serde_json::Value;

use common::*;

const TRUST_LOOPBACK: &str = r#"limits.trusted_proxies=["127.0.0.1"]"#;
const A: &str = "X-Forwarded-For: 203.0.113.1";
const B: &str = "X-Forwarded-For: 203.0.113.2";
const C: &str = "X-Forwarded-For: 203.0.113.3";

/// One request with `Connection: close`: (status, JSON body, head).
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, Value, String) {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
    let text = raw_exchange(addr, req.as_bytes());
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status_of(&text), json, head.to_string())
}

/// `POST /api/summarize?wait=0` (202 as soon as the job is queued).
fn summarize(addr: SocketAddr, url: &str, headers: &[&str]) -> (u16, Value, String) {
    let body = serde_json::json!({ "url": url }).to_string();
    call(addr, "POST", "/api/summarize?wait=0", headers, &body)
}

/// The status and error code of an answer.
fn outcome(answer: &(u16, Value, String)) -> (u16, Option<&str>) {
    (answer.0, answer.1["error"]["code"].as_str())
}

/// The `Retry-After` seconds of a response head.
#[track_caller]
fn retry_after(head: &str) -> u64 {
    head.lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {head}"))
}

/// Reads a job stream until its `done`.
fn read_to_done(c: &mut SseClient) {
    while let Some(ev) = c.next_message() {
        if ev.event.as_deref() == Some("done") {
            return;
        }
    }
    panic!("the job stream ended without done");
}

#[test]
fn new_jobs_are_rate_limited_per_client_ip_with_retry_after() {
    let server = Server::start(&[
        "--set",
        TRUST_LOOPBACK,
        "--set",
        "limits.jobs_per_min=1",
        "--set",
        "limits.job_burst=2",
        "--set",
        "jobs.demo_token_ms=60000",
    ]);
    let addr = server.addr;
    let first = summarize(addr, "https://example.com/1", &[A]);
    assert_eq!(first.0, 202, "{first:?}");
    assert_eq!(summarize(addr, "https://example.com/2", &[A]).0, 202);
    // The burst is spent: summarize and ask share the budget.
    let refused = summarize(addr, "https://example.com/3", &[A]);
    assert_eq!(
        outcome(&refused),
        (429, Some("rate_limited")),
        "{refused:?}"
    );
    assert!((1..=60).contains(&retry_after(&refused.2)), "{}", refused.2);
    let ask = call(addr, "GET", "/api/ask?q=more", &[A], "");
    assert_eq!(outcome(&ask), (429, Some("rate_limited")));
    assert!(ask.1["error"]["message"]
        .as_str()
        .unwrap()
        .contains("client IP"));
    // Following a job is not a new one.
    let id = first.1["jobId"].as_str().unwrap();
    let follow = SseClient::open(addr, &format!("/api/ask?job={id}"), &[A]);
    assert_eq!(follow.status, 200, "{}", follow.head);
    // Another IP has its own budget; this machine has none.
    assert_eq!(summarize(addr, "https://example.com/4", &[B]).0, 202);
    for i in 5..10 {
        let local = summarize(addr, &format!("https://example.com/{i}"), &[]);
        assert_eq!(local.0, 202, "{local:?}");
    }
    let rejected = r#"redix_connections_rejected_total{reason="job_rate"}"#;
    assert_eq!(server.metric(rejected), 2.0);
}

#[test]
fn an_api_key_is_one_budget_across_ips() {
    let server = Server::start(&[
        "--api-key",
        "k1",
        "--api-key",
        "k2",
        "--set",
        TRUST_LOOPBACK,
        "--set",
        "limits.jobs_per_min=1",
        "--set",
        "limits.job_burst=2",
        "--set",
        "jobs.demo_token_ms=60000",
    ]);
    let addr = server.addr;
    let k1 = "X-API-Key: k1";
    assert_eq!(summarize(addr, "https://example.com/1", &[A, k1]).0, 202);
    assert_eq!(summarize(addr, "https://example.com/2", &[B, k1]).0, 202);
    let refused = summarize(addr, "https://example.com/3", &[C, k1]);
    assert_eq!(
        outcome(&refused),
        (429, Some("rate_limited")),
        "{refused:?}"
    );
    assert!(refused.1["error"]["message"]
        .as_str()
        .unwrap()
        .contains("API key"));
    // A key counts from this machine too.
    let local = summarize(addr, "https://example.com/4", &["Authorization: Bearer k1"]);
    assert_eq!(outcome(&local), (429, Some("rate_limited")));
    // The same IP without the key, or with another key, is another client;
    // an unknown key is no key.
    assert_eq!(summarize(addr, "https://example.com/5", &[C]).0, 202);
    assert_eq!(
        summarize(addr, "https://example.com/6", &[C, "X-API-Key: k2"]).0,
        202
    );
    assert_eq!(
        summarize(addr, "https://example.com/7", &[C, "X-API-Key: nope"]).0,
        202
    );
}

#[test]
fn jobs_in_flight_are_capped_per_client_and_free_up_as_jobs_end() {
    // Jobs of about 25 tokens, 200 ms apart: seconds to ask more while
    // the first ones run.
    let server = Server::start(&[
        "--set",
        TRUST_LOOPBACK,
        "--set",
        "limits.jobs_in_flight=2",
        "--set",
        "limits.jobs_per_min=0",
        "--set",
        "jobs.demo_token_ms=200",
    ]);
    let addr = server.addr;
    let mut first = SseClient::open(addr, "/api/ask?q=one", &[A]);
    let second = SseClient::open(addr, "/api/ask?q=two", &[A]);
    assert_eq!((first.status, second.status), (200, 200), "{}", second.head);
    let refused = call(addr, "GET", "/api/ask?q=three", &[A], "");
    assert_eq!(
        outcome(&refused),
        (429, Some("too_many_jobs")),
        "{refused:?}"
    );
    assert!(retry_after(&refused.2) >= 1);
    let summary = summarize(addr, "https://example.com/a", &[A]);
    assert_eq!(
        outcome(&summary),
        (429, Some("too_many_jobs")),
        "{summary:?}"
    );
    // Another client is not held back.
    let other = SseClient::open(addr, "/api/ask?q=other", &[B]);
    assert_eq!(other.status, 200, "{}", other.head);
    // Once one of its jobs is done, the client may start another.
    read_to_done(&mut first);
    let mut again = None;
    wait_until("a new job once one ended", || {
        let c = SseClient::open(addr, "/api/ask?q=again", &[A]);
        let ok = c.status == 200;
        again = ok.then_some(c);
        ok
    });
    let rejected = r#"redix_connections_rejected_total{reason="jobs_in_flight"}"#;
    assert!(server.metric(rejected) >= 2.0);
}

#[test]
fn a_summarize_that_joins_a_job_is_not_a_new_job() {
    let server = Server::start(&[
        "--set",
        TRUST_LOOPBACK,
        "--set",
        "limits.jobs_in_flight=1",
        "--set",
        "jobs.demo_token_ms=60000",
    ]);
    let addr = server.addr;
    let own = summarize(addr, "https://example.com/same", &[A]);
    assert_eq!(own.0, 202, "{own:?}");
    let joined = summarize(addr, "https://example.com/same", &[A]);
    assert_eq!((joined.0, &joined.1["jobId"]), (202, &own.1["jobId"]));
    let refused = summarize(addr, "https://example.com/other", &[A]);
    assert_eq!(outcome(&refused), (429, Some("too_many_jobs")));
    // B joins A's job and still has its one job to start.
    let joined = summarize(addr, "https://example.com/same", &[B]);
    assert_eq!((joined.0, &joined.1["jobId"]), (202, &own.1["jobId"]));
    assert_eq!(summarize(addr, "https://example.com/other", &[B]).0, 202);
    assert_eq!(server.metric("redix_jobs_joined_total"), 2.0);
    assert_eq!(server.metric("redix_jobs_submitted_total"), 2.0);
}

#[test]
fn sighup_changes_the_cap_on_jobs_in_flight() {
    let dir = std::env::temp_dir().join(format!("redix-jlimits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("redix.toml");
    let config = |cap: u32| {
        let text = format!(
            "[limits]\ntrusted_proxies = [\"127.0.0.1\"]\njobs_in_flight = {cap}\n[jobs]\ndemo_token_ms = 60000\n"
        );
        std::fs::write(&path, text).unwrap();
    };
    config(1);
    let server = Server::start(&["--config", path.to_str().unwrap()]);
    let addr = server.addr;
    assert_eq!(summarize(addr, "https://example.com/1", &[A]).0, 202);
    assert_eq!(summarize(addr, "https://example.com/2", &[A]).0, 429);
    config(2);
    server.signal(libc::SIGHUP);
    wait_until("the reload", || server.logs().contains("2 in flight"));
    assert_eq!(summarize(addr, "https://example.com/2", &[A]).0, 202);
    assert_eq!(summarize(addr, "https://example.com/3", &[A]).0, 429);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn publishes_are_rate_limited_per_key_and_local_keyless_ones_are_exempt() {
    let body = r#"{"channel":"c","data":1}"#;
    let server = Server::start(&[
        "--api-key",
        "k1",
        "--api-key",
        "k2",
        "--set",
        "limits.publishes_per_sec=1",
        "--set",
        "limits.publish_burst=2",
    ]);
    let publish = |key: &str| call(server.addr, "POST", "/api/publish", &[key], body);
    assert_eq!(publish("X-API-Key: k1").0, 200);
    assert_eq!(publish("X-API-Key: k1").0, 200);
    let refused = publish("X-API-Key: k1");
    assert_eq!(
        outcome(&refused),
        (429, Some("rate_limited")),
        "{refused:?}"
    );
    assert_eq!(retry_after(&refused.2), 1);
    assert_eq!(publish("X-API-Key: k2").0, 200, "per key");
    let rejected = r#"redix_connections_rejected_total{reason="publish_rate"}"#;
    assert_eq!(server.metric(rejected), 1.0);

    // No key configured: only this machine publishes, and it is exempt.
    let server = Server::start(&[
        "--set",
        "limits.publishes_per_sec=1",
        "--set",
        "limits.publish_burst=1",
    ]);
    for i in 0..20 {
        let (status, _, _) = call(server.addr, "POST", "/api/publish", &[], body);
        assert_eq!(status, 200, "publish {i}");
    }
}

#[test]
fn requests_parked_on_a_reactor_are_capped() {
    let server = Server::start(&[
        "--workers",
        "1",
        "--set",
        "jobs.parked_per_reactor=1",
        "--set",
        "jobs.demo_token_ms=60000",
    ]);
    let addr = server.addr;
    // A summarize held for its 3 s window takes the one place.
    let body = r#"{"url":"https://example.com/held"}"#;
    let mut held = TcpStream::connect(addr).unwrap();
    held.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        held,
        "POST /api/summarize?wait=3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    wait_until("the held job", || {
        server.metric("redix_jobs_submitted_total") == 1.0
    });
    let refused = summarize(addr, "https://example.com/next", &[]);
    assert_eq!(outcome(&refused), (503, Some("jobs_busy")), "{refused:?}");
    assert_eq!(retry_after(&refused.2), 1);
    // Its 202 at the window's end gives the place back.
    let mut answer = String::new();
    let _ = held.read_to_string(&mut answer);
    assert_eq!(status_of(&answer), 202, "{answer}");
    assert_eq!(summarize(addr, "https://example.com/next", &[]).0, 202);
    // A client that hangs up while parked gives its place back at once,
    // not at the end of its 10 s window.
    let mut gone = TcpStream::connect(addr).unwrap();
    write!(
        gone,
        "POST /api/summarize?wait=10 HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    wait_until("the place taken", || {
        summarize(addr, "https://example.com/probe", &[]).0 == 503
    });
    let hung_up = std::time::Instant::now();
    drop(gone);
    wait_until("the place back", || {
        summarize(addr, "https://example.com/after", &[]).0 == 202
    });
    let window = std::time::Duration::from_secs(10);
    assert!(
        hung_up.elapsed() < window,
        "freed before the window would have ended"
    );
}
