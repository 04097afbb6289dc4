//! Jobs in Redis mode against a real `redis-server` per test: the worker
//! protocol spoken by `redis-cli` alone and by `examples/worker.rs` as a
//! process; summaries cached for every node; one job for a URL in flight,
//! whichever node is asked; a job followed on another node from its first
//! event; a killed worker's job taken over; the
//! breaker opening with no worker and closing when one starts; a quiet job
//! failing `worker_stalled`; a job delivered too often failing
//! `attempts_exhausted`; a client's jobs in flight capped until they end;
//! Redis gone answering 503 at once.

mod common;

use std::process::Command;

use redix::jobs::{demo, Kind};
use serde_json::Value;

use common::*;

/// `redis-cli` against the test's Redis: its output lines (raw replies,
/// one value a line).
fn cli(redis: &RedisServer, args: &[&str]) -> Vec<String> {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// A queue entry as `XREADGROUP`/`XAUTOCLAIM` print it: (entry id, job id).
fn entry_of(lines: &[String]) -> Option<(String, String)> {
    let at = lines.iter().position(|l| l == "id")?;
    Some((lines.get(at - 1)?.clone(), lines.get(at + 1)?.clone()))
}

/// `FCALL redix_job_event` as a worker named `worker` sends it; the reply.
fn event(redis: &RedisServer, job: &str, worker: &str, kind: &str, body: &str) -> String {
    let key = format!("redix:job:{job}");
    let args = ["FCALL", "redix_job_event", "1", &key, worker, kind, body];
    cli(redis, &args).join("\n")
}

#[test]
fn an_ask_job_is_run_by_hand_with_redis_cli() {
    let redis = RedisServer::start();
    let node = redis_node(&redis, &[]);
    let mut c = SseClient::open(node.addr, "/api/ask?q=by%20hand", &[]);
    assert_eq!(c.status, 200, "{}", c.head);
    // The job is queued once the stream is open: take it as worker "cli".
    let read = take_asks(&redis, "cli", 1);
    let (entry, job) = entry_of(&read).unwrap_or_else(|| panic!("a job: {read:?}"));
    assert!(read.contains(&"by hand".to_string()), "{read:?}");
    let mut ids = Vec::new();
    for text in ["Hel", "lo, ", "world"] {
        let body = serde_json::json!({ "text": text }).to_string();
        ids.push(event(&redis, &job, "cli", "token", &body));
    }
    ids.push(event(
        &redis,
        &job,
        "cli",
        "done",
        r#"{"result":"Hello, world"}"#,
    ));
    cli(&redis, &["XACK", "redix:jobs:ask", "workers", &entry]);
    let events = read_job(&mut c);
    let seen: Vec<&str> = events.iter().map(|(id, ..)| id.as_str()).collect();
    assert_eq!(seen, ids, "the ids FCALL returned are the stream's");
    let names: Vec<&str> = events.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(names, ["token", "token", "token", "done"]);
    assert_eq!(text_of(&events), "Hello, world");
    assert_eq!(
        events[3].2,
        serde_json::json!({"type": "done", "result": "Hello, world"})
    );
    // The job has ended: a late event is refused, and the node knows.
    let late = event(&redis, &job, "cli", "token", r#"{"text":"late"}"#);
    assert!(late.starts_with("ENDED"), "{late}");
    wait_until("the node to count the job done", || {
        node.metric("redix_jobs_completed_total") == 1.0
    });
}

#[test]
fn the_example_worker_serves_summaries_and_asks_across_nodes() {
    let redis = RedisServer::start();
    let a = redis_node(&redis, &[]);
    let b = redis_node(&redis, &[]);
    let _worker = Worker::start(&redis, "w1", 20);
    let url = "https://example.com/article";
    let want = demo::tokens(Kind::Summarize, url).concat();
    let (status, first, _) = summarize(a.addr, url, "?wait=10");
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["summary"].as_str(), &first["cached"]),
        (Some(want.as_str()), &Value::Bool(false))
    );
    // Node B: from the cache Redis holds, no new job.
    let (status, again, _) = summarize(b.addr, url, "");
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["cached"], true);
    assert_eq!(again["summary"], first["summary"]);
    assert_eq!(b.metric("redix_jobs_submitted_total"), 0.0);
    assert_eq!(b.metric("redix_jobs_cache_hits_total"), 1.0);
    // A 202 from A, followed on B while the worker streams it.
    let other = "https://example.com/other";
    let (status, accepted, _) = summarize(a.addr, other, "?wait=0");
    assert_eq!(status, 202, "{accepted}");
    let stream = accepted["stream"].as_str().expect("stream").to_string();
    let mut c = SseClient::open(b.addr, &stream, &[]);
    assert_eq!(c.status, 200, "{}", c.head);
    let events = read_job(&mut c);
    let tokens = demo::tokens(Kind::Summarize, other);
    assert_eq!(
        text_of(&events),
        tokens.concat(),
        "every token from the first"
    );
    assert_eq!(events.len(), tokens.len() + 1);
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("done"));
    // An ask through A, streamed from its first token.
    let mut ask = SseClient::open(a.addr, "/api/ask?q=what%20now", &[]);
    let asked = read_job(&mut ask);
    assert_eq!(
        text_of(&asked),
        demo::tokens(Kind::Ask, "what now").concat()
    );
    wait_until("A to count its three jobs done", || {
        a.metric("redix_jobs_completed_total") == 3.0
    });
}

#[test]
fn one_url_in_flight_is_one_job_across_nodes() {
    let redis = RedisServer::start();
    let nodes = [redis_node(&redis, &[]), redis_node(&redis, &[])];
    let url = "https://example.com/same";
    // No worker yet: the job stays in flight, every request joins it.
    let answers: Vec<(u16, Value, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let addr = nodes[i % 2].addr;
                s.spawn(move || summarize(addr, url, "?wait=0"))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a request"))
            .collect()
    });
    assert!(answers.iter().all(|(s, ..)| *s == 202), "{answers:?}");
    let ids: std::collections::HashSet<&str> = answers
        .iter()
        .filter_map(|(_, v, _)| v["jobId"].as_str())
        .collect();
    assert_eq!(ids.len(), 1, "one job: {ids:?}");
    let total = |name: &str| nodes.iter().map(|n| n.metric(name)).sum::<f64>();
    assert_eq!(total("redix_jobs_submitted_total"), 1.0);
    assert_eq!(total("redix_jobs_joined_total"), 19.0);
    let _worker = Worker::start(&redis, "w1", 1);
    let (status, done, _) = summarize(nodes[1].addr, url, "?wait=10");
    assert_eq!(status, 200, "{done}");
    assert!(ids.contains(done["jobId"].as_str().unwrap_or("cached")) || done["cached"] == true);
}

/// `POST /api/summarize?wait=0` from client IP `ip` (through the trusted
/// proxy 127.0.0.1): (status, JSON body).
fn summarize_from(addr: std::net::SocketAddr, ip: &str, url: &str) -> (u16, Value) {
    let body = serde_json::json!({ "url": url }).to_string();
    let req = format!(
        "POST /api/summarize?wait=0 HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Forwarded-For: {ip}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let text = raw_exchange(addr, req.as_bytes());
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status_of(&text), json)
}

#[test]
fn a_client_s_jobs_in_flight_are_capped_until_they_end() {
    let redis = RedisServer::start();
    let args = [
        "--set",
        r#"limits.trusted_proxies=["127.0.0.1"]"#,
        "--set",
        "limits.jobs_in_flight=2",
    ];
    let node = redis_node(&redis, &args);
    let ip = "203.0.113.7";
    for url in ["https://example.com/1", "https://example.com/2"] {
        assert_eq!(summarize_from(node.addr, ip, url).0, 202);
    }
    let (status, err) = summarize_from(node.addr, ip, "https://example.com/3");
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (429, Some("too_many_jobs")),
        "{err}"
    );
    // Joining a job in flight is no new job; another client has its own cap.
    assert_eq!(
        summarize_from(node.addr, ip, "https://example.com/1").0,
        202
    );
    assert_eq!(
        summarize_from(node.addr, "203.0.113.8", "https://example.com/3").0,
        202
    );
    // The jobs end: the client's slots come back.
    let _worker = Worker::start(&redis, "w1", 1);
    wait_until("the three jobs to end", || {
        node.metric("redix_jobs_completed_total") == 3.0
    });
    let (status, body) = summarize_from(node.addr, ip, "https://example.com/4");
    assert_eq!(status, 202, "{body}");
}

#[test]
fn a_killed_worker_s_job_is_taken_over_and_completes() {
    let redis = RedisServer::start();
    let node = redis_node(&redis, &["--set", "jobs.visibility_ms=500"]);
    let mut slow = Worker::start(&redis, "slow", 150);
    let mut c = SseClient::open(node.addr, "/api/ask?q=take%20over", &[]);
    assert_eq!(c.status, 200, "{}", c.head);
    let mut events = vec![next_job_event(&mut c).expect("a token from the slow worker")];
    // Another worker waits for quiet jobs; the slow one talks every 150 ms
    // (each event restarts the visibility window): it keeps its job for
    // well over the window.
    let _fast = Worker::start(&redis, "fast", 5);
    while events.len() < 8 {
        events.push(next_job_event(&mut c).expect("a token from the slow worker"));
    }
    assert!(
        events.iter().all(|(_, _, d)| d.get("attempt").is_none()),
        "{events:?}"
    );
    slow.kill();
    events.extend(read_job(&mut c));
    let (_, last, done) = events.last().expect("events").clone();
    assert_eq!(last, "done", "{events:?}");
    let whole = demo::tokens(Kind::Ask, "take over").concat();
    assert_eq!(done["result"], whole.as_str());
    assert_eq!(done["attempt"], 2);
    // The retry streams from its first token again, each event marked with
    // its attempt: a client starts its text over at the first "attempt": 2.
    let retry_at = events
        .iter()
        .position(|(_, _, d)| d["attempt"] == 2)
        .expect("events of the second attempt");
    assert!(retry_at >= 8, "the first attempt's tokens came first");
    assert_eq!(text_of(&events[retry_at..]), whole);
    assert!(events[..retry_at]
        .iter()
        .all(|(_, _, d)| d.get("attempt").is_none()));
}

#[test]
fn with_no_worker_the_breaker_opens_and_a_worker_closes_it() {
    let redis = RedisServer::start();
    let node = redis_node(&redis, &["--set", "jobs.progress_ms=300"]);
    for i in 0..5 {
        let (status, body, _) =
            summarize(node.addr, &format!("https://example.com/{i}"), "?wait=0");
        assert_eq!(status, 202, "{body}");
    }
    wait_until("the breaker to open", || {
        node.metric("redix_jobs_breaker_state") == 1.0
    });
    let (status, err, head) = summarize(node.addr, "https://example.com/more", "?wait=0");
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "jobs_unavailable");
    assert!(head.contains("Retry-After: 5"), "{head}");
    assert_eq!(node.metric("redix_jobs_pending"), 5.0);
    let _worker = Worker::start(&redis, "w1", 1);
    wait_until("the breaker to close", || {
        node.metric("redix_jobs_breaker_state") == 0.0
    });
    wait_until("the queue to drain", || {
        node.metric("redix_jobs_completed_total") == 5.0 && node.metric("redix_jobs_pending") == 0.0
    });
    let (status, body, _) = summarize(node.addr, "https://example.com/after", "?wait=10");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_job_that_goes_quiet_fails_worker_stalled() {
    let redis = RedisServer::start();
    let node = redis_node(&redis, &["--set", "jobs.stall_ms=500"]);
    let mut started = SseClient::open(node.addr, "/api/ask?q=quiet", &[]);
    assert_eq!(started.status, 200, "{}", started.head);
    let mut taken = SseClient::open(node.addr, "/api/ask?q=never%20started", &[]);
    assert_eq!(taken.status, 200, "{}", taken.head);
    // "cli" takes both, starts one with a token, then says nothing.
    let read = take_asks(&redis, "cli", 2);
    let at = read
        .iter()
        .position(|l| l == "quiet")
        .expect("the first job");
    let (_, job) = entry_of(&read[..=at]).unwrap_or_else(|| panic!("a job: {read:?}"));
    event(&redis, &job, "cli", "token", r#"{"text":"Hm"}"#);
    let events = read_job(&mut started);
    let (_, name, data) = events.last().expect("events").clone();
    assert_eq!((events.len(), name.as_str()), (2, "error"), "{events:?}");
    assert_eq!(data["code"], "worker_stalled");
    // Taken and never started is as quiet.
    let never = read_job(&mut taken);
    assert_eq!(never.len(), 1, "{never:?}");
    assert_eq!(never[0].2["code"], "worker_stalled");
    wait_until("the stalls and failures to be counted", || {
        node.metric("redix_jobs_stalled_total") == 2.0
            && node.metric("redix_jobs_failed_total") == 2.0
    });
    let late = event(&redis, &job, "cli", "token", r#"{"text":"back"}"#);
    assert!(late.starts_with("ENDED"), "{late}");
}

#[test]
fn a_job_delivered_too_often_fails_attempts_exhausted() {
    let redis = RedisServer::start();
    let args = [
        "--set",
        "jobs.max_attempts=2",
        "--set",
        "jobs.visibility_ms=200",
    ];
    let node = redis_node(&redis, &args);
    let mut c = SseClient::open(node.addr, "/api/ask?q=again", &[]);
    assert_eq!(c.status, 200, "{}", c.head);
    // Delivered to "one", then taken over by "two" once "one" is quiet for
    // the visibility window; "two" goes quiet too.
    let read = take_asks(&redis, "one", 1);
    let (entry, _) = entry_of(&read).unwrap_or_else(|| panic!("a job: {read:?}"));
    wait_until("worker two to take the job over", || {
        let claimed = cli(
            &redis,
            &[
                "XAUTOCLAIM",
                "redix:jobs:ask",
                "workers",
                "two",
                "200",
                "0-0",
                "COUNT",
                "1",
            ],
        );
        claimed.contains(&entry)
    });
    let events = read_job(&mut c);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1, "error");
    assert_eq!(events[0].2["code"], "attempts_exhausted");
    let pending = cli(&redis, &["XPENDING", "redix:jobs:ask", "workers"]);
    assert_eq!(
        pending.first().map(String::as_str),
        Some("0"),
        "acknowledged: {pending:?}"
    );
    wait_until("the failure to be counted", || {
        node.metric("redix_jobs_failed_total") == 1.0
    });
}

#[test]
fn with_redis_gone_job_requests_get_503_at_once() {
    let mut redis = RedisServer::start();
    let node = redis_node(&redis, &[]);
    redis.kill();
    let started = std::time::Instant::now();
    let (status, err, head) = summarize(node.addr, "https://example.com/x", "");
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "redis_unavailable");
    assert!(head.contains("Retry-After: 1"), "{head}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "at once"
    );
    let c = SseClient::open(node.addr, "/api/ask?q=nothing", &[]);
    assert_eq!(c.status, 503, "{}", c.head);
}

/// `XREADGROUP` as a worker: up to `count` new ask jobs for `consumer`.
fn take_asks(redis: &RedisServer, consumer: &str, count: u32) -> Vec<String> {
    let count = count.to_string();
    let args = [
        "XREADGROUP",
        "GROUP",
        "workers",
        consumer,
        "COUNT",
        &count,
        "STREAMS",
        "redix:jobs:ask",
        ">",
    ];
    cli(redis, &args)
}
