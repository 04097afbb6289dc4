//! Jobs in embedded mode: `/api/summarize` answers from the cache, within
//! its quick-check window, or with 202 and the job to follow; `/api/ask`
//! streams a job's tokens and `done`; following a job replays it from the
//! first event, resumes with `Last-Event-ID` and ends with 204 past the
//! end; the same URL in flight is one job; the breaker opens when nothing
//! picks jobs up; per-IP SSE limits hold for job streams.

mod common;

use serde_json::Value;

use common::*;

#[test]
fn ask_streams_every_token_then_done_and_ends() {
    let server = Server::start(&["--set", "jobs.demo_token_ms=5"]);
    let mut c = SseClient::open(server.addr, "/api/ask?q=hello%20there", &[]);
    assert_eq!(c.status, 200, "{}", c.head);
    let events = read_job(&mut c);
    let (_, last, done) = events.last().expect("events").clone();
    assert_eq!(last, "done");
    assert!(events.len() > 10, "{events:?}");
    assert_eq!(text_of(&events), done["result"].as_str().unwrap());
    assert!(text_of(&events).starts_with("Demo answer to \"hello there\": "));
    let ids: Vec<u64> = events.iter().map(|(id, ..)| id.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow");
    // Counted once `done` is out: the client may see it first.
    wait_until("the job to be counted", || {
        server.metric("redix_jobs_completed_total") == 1.0
    });
}

#[test]
fn a_summary_comes_within_the_window_then_from_the_cache() {
    let server = Server::start(&["--set", "jobs.demo_token_ms=1"]);
    let url = "https://example.com/article";
    let (status, first, _) = summarize(server.addr, url, "");
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["cached"], false);
    assert!(first["summary"]
        .as_str()
        .unwrap()
        .contains("example.com/article"));
    let (status, again, _) = summarize(server.addr, url, "");
    assert_eq!(status, 200);
    assert_eq!(again["cached"], true);
    assert_eq!(again["summary"], first["summary"]);
    assert_eq!(server.metric("redix_jobs_submitted_total"), 1.0);
    assert_eq!(server.metric("redix_jobs_cache_hits_total"), 1.0);
}

#[test]
fn a_202_job_is_followed_from_its_first_event_and_resumed_once() {
    let server = Server::start(&["--set", "jobs.demo_token_ms=20"]);
    let (status, accepted, head) = summarize(server.addr, "https://example.com/x", "?wait=0");
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["jobId"].as_str().unwrap().to_string();
    let stream = format!("/api/ask?job={id}");
    assert_eq!(accepted["stream"], stream.as_str());
    assert_eq!(accepted["status"], "pending");
    assert!(head.contains(&format!("Location: {stream}")), "{head}");
    // From the first event, whenever one subscribes.
    let mut whole = SseClient::open(server.addr, &stream, &[]);
    let all = read_job(&mut whole);
    assert_eq!(all.last().unwrap().1, "done");
    // Dropping after a few and resuming gets the rest once.
    let cut = &all[4].0;
    let header = format!("Last-Event-ID: {cut}");
    let mut resumed = SseClient::open(server.addr, &stream, &[&header]);
    let rest = read_job(&mut resumed);
    assert_eq!(rest, all[5..].to_vec());
    // Past the end: 204, so an EventSource stops reconnecting.
    let end = format!("Last-Event-ID: {}", all.last().unwrap().0);
    let past = SseClient::open(server.addr, &stream, &[&end]);
    assert_eq!(past.status, 204, "{}", past.head);
    assert_eq!(get(server.addr, "/api/ask?job=nosuchjob").0, 404);
}

#[test]
fn fifty_requests_for_one_url_make_one_job() {
    let server = Server::start(&["--set", "jobs.demo_token_ms=30"]);
    let addr = server.addr;
    let answers: Vec<(u16, Value, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| s.spawn(move || summarize(addr, "https://example.com/same", "?wait=10")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: std::collections::HashSet<&str> = answers
        .iter()
        .filter_map(|(_, v, _)| v["jobId"].as_str())
        .collect();
    assert!(answers.iter().all(|(s, ..)| *s == 200), "{answers:?}");
    assert_eq!(ids.len(), 1, "one job: {ids:?}");
    assert_eq!(server.metric("redix_jobs_submitted_total"), 1.0);
    assert_eq!(server.metric("redix_jobs_joined_total"), 49.0);
}

#[test]
fn with_no_worker_summaries_get_202_and_the_breaker_opens() {
    let server = Server::start(&[
        // 200 requests at once from this machine: more than the default
        // HTTP connections per IP (64) may be open together.
        "--set",
        "limits.http_per_ip=256",
        "--set",
        "jobs.demo_worker=false",
        "--set",
        "jobs.progress_ms=1500",
        "--set",
        "jobs.cooldown_ms=200",
    ]);
    let addr = server.addr;
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..200)
            .map(|i| {
                s.spawn(move || {
                    let url = format!("https://example.com/{i}");
                    summarize(addr, &url, "?wait=0").0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|s| *s == 202), "{statuses:?}");
    // Nothing picks them up: the breaker opens and says when to retry.
    wait_until("the breaker to open", || {
        server.metric("redix_jobs_breaker_state") == 1.0
    });
    let (status, err, head) = summarize(addr, "https://example.com/more", "");
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "jobs_unavailable");
    assert!(head.contains("Retry-After: 1"), "{head}");
    assert_eq!(server.metric("redix_jobs_pending"), 200.0);
}

#[test]
fn bad_requests_get_clear_errors() {
    let server = Server::start(&[]);
    let (status, err, _) = summarize(server.addr, "ftp://example.com", "");
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("bad_url"))
    );
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("http://"));
    let long = format!("https://example.com/{}", "a".repeat(2100));
    let (status, err, _) = summarize(server.addr, &long, "");
    assert_eq!(status, 400);
    assert!(err["error"]["message"].as_str().unwrap().contains("2048"));
    let (status, err, _) = summarize(server.addr, "https://example.com", "?wait=11");
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("bad_wait"))
    );
    let (status, _) = request(server.addr, "POST", "/api/summarize", &[], "{");
    assert_eq!(status, 400);
    assert_eq!(get(server.addr, "/api/summarize").0, 405);
    assert_eq!(get(server.addr, "/api/ask").0, 400);
    assert_eq!(get(server.addr, "/api/ask?job=a%20b").0, 400);
    // A page the demo worker cannot fetch: the job fails, and says why.
    let (status, err, _) = summarize(server.addr, "https://down.invalid/x", "");
    assert_eq!(status, 502, "{err}");
    assert_eq!(err["error"]["code"], "fetch_failed");
    assert_eq!(server.metric("redix_jobs_failed_total"), 1.0);
}

#[test]
fn ask_streams_count_toward_the_per_ip_sse_limit() {
    // Slow tokens: every stream stays open while the next ones come.
    let server = Server::start(&["--set", "jobs.demo_token_ms=60000"]);
    let mut open = Vec::new();
    let mut refused = 0;
    for i in 0..25 {
        let c = SseClient::open(server.addr, &format!("/api/ask?q=test{i}"), &[]);
        match c.status {
            200 => open.push(c),
            429 => refused += 1,
            other => panic!("status {other}: {}", c.head),
        }
    }
    assert_eq!((open.len(), refused), (20, 5));
    // Closing one frees a slot.
    drop(open.pop());
    wait_until("a slot to free", || {
        let c = SseClient::open(server.addr, "/api/ask?q=again", &[]);
        let ok = c.status == 200;
        if ok {
            open.push(c);
        }
        ok
    });
}
