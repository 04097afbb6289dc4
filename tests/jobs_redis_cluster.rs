//! Jobs in Redis Cluster mode against a real cluster (three masters, one
//! replica each) and the real example worker (`--cluster`): an ask
//! streamed to `done`; summaries accepted on one node and streamed on the
//! other, their jobs' slots on every shard; the summary cached for every
//! node; a killed worker's job taken over and completed; the worker
//! protocol by hand (`redis-cli -c`), a quiet job failing
//! `worker_stalled` and its entry acknowledged by the sweep; the job
//! functions loaded again after a `FUNCTION FLUSH`, and jobs on a shard
//! whose master was killed running on its promoted replica.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use redix::jobs::{demo, Kind};
use serde_json::Value;

use common::*;

/// A cluster node whose job engine is set up (functions on every master,
/// its two connections open).
fn jobs_node(seeds: &[RedisServer], args: &[&str]) -> Server {
    let node = cluster_node_with(seeds, args);
    wait_until("the job engine's Redis connections", || {
        let (status, body) = get(node.addr, "/debug/fds");
        let fds: Value = serde_json::from_str(&body).unwrap_or_default();
        status == 200 && fds["owned"]["jobs"] == 2
    });
    node
}

/// Which third of the slots job `id`'s keys fall in (`redis-cli` gives
/// each master one third).
fn shard_of(node: &RedisServer, id: &str) -> usize {
    (slot_of_job(node, id) * 3 / 16384).min(2)
}

/// The slot of job `id`'s keys.
fn slot_of_job(node: &RedisServer, id: &str) -> usize {
    let key = format!("rx:{{job:{id}}}:job");
    let reply = node
        .command(&["CLUSTER", "KEYSLOT", &key])
        .expect("KEYSLOT");
    reply.trim().trim_start_matches(':').parse().expect("slot")
}

/// The slot ranges `node` serves (its own line of `CLUSTER NODES`).
fn slots_of(node: &RedisServer) -> Vec<(usize, usize)> {
    let nodes = node.command(&["CLUSTER", "NODES"]).expect("CLUSTER NODES");
    let mine = nodes
        .lines()
        .find(|l| l.contains("myself"))
        .expect("its own line");
    mine.split(' ')
        .skip(8)
        .filter_map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// Reads job `id`'s stream on `addr` to its end; asserts the demo text.
fn streams_to_done(addr: std::net::SocketAddr, stream: &str, url: &str) {
    let mut c = SseClient::open(addr, stream, &[]);
    assert_eq!(c.status, 200, "{}", c.head);
    let events = read_job(&mut c);
    let tokens = demo::tokens(Kind::Summarize, url);
    assert_eq!(text_of(&events), tokens.concat(), "{stream}");
    assert_eq!(events.len(), tokens.len() + 1, "{stream}");
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("done"));
}

#[test]
fn asks_and_summaries_run_on_every_shard() {
    let cluster = start_cluster();
    let seeds = &cluster[..3];
    let (a, b) = (jobs_node(seeds, &[]), jobs_node(seeds, &[]));
    let _worker = Worker::start_cluster(&cluster[0], "w1", 5);
    // An ask, streamed from its first token to `done`.
    let mut ask = SseClient::open(a.addr, "/api/ask?q=hello", &[]);
    assert_eq!(ask.status, 200, "{}", ask.head);
    let asked = read_job(&mut ask);
    assert_eq!(text_of(&asked), demo::tokens(Kind::Ask, "hello").concat());
    assert_eq!(asked.last().map(|e| e.1.as_str()), Some("done"));
    // Summaries accepted by A until their jobs sit on every shard.
    let mut per_shard: BTreeMap<usize, Vec<(String, String)>> = BTreeMap::new();
    for i in 0..64 {
        let url = format!("https://example.com/{i}");
        let (status, accepted, _) = summarize(a.addr, &url, "?wait=0");
        assert_eq!(status, 202, "{accepted}");
        let id = accepted["jobId"].as_str().expect("jobId");
        let stream = accepted["stream"].as_str().expect("stream").to_string();
        per_shard
            .entry(shard_of(&cluster[0], id))
            .or_default()
            .push((stream, url));
        if per_shard.len() == 3 {
            break;
        }
    }
    assert_eq!(per_shard.len(), 3, "jobs on every shard: {per_shard:?}");
    let jobs: Vec<(String, String)> = per_shard.values().flatten().cloned().collect();
    for (stream, url) in &jobs {
        streams_to_done(b.addr, stream, url);
    }
    let created = 1 + jobs.len();
    println!(
        "cluster jobs: {} summaries over shards {:?}, 1 ask",
        jobs.len(),
        per_shard
            .iter()
            .map(|(s, j)| (*s, j.len()))
            .collect::<Vec<_>>()
    );
    wait_until("A to count every job done", || {
        a.metric("redix_jobs_completed_total") == created as f64
    });
    // B finds the summary A's job left in the cache.
    let url = &jobs[0].1;
    let (status, again, _) = summarize(b.addr, url, "");
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["cached"], true, "{again}");
    assert_eq!(
        again["summary"],
        demo::tokens(Kind::Summarize, url).concat().as_str()
    );
    assert_eq!(b.metric("redix_jobs_submitted_total"), 0.0);
    // A summary waited for (`?wait`) comes back whole.
    let fresh = "https://example.com/waited";
    let (status, whole, _) = summarize(b.addr, fresh, "?wait=10");
    assert_eq!(status, 200, "{whole}");
    assert_eq!(
        whole["summary"],
        demo::tokens(Kind::Summarize, fresh).concat().as_str()
    );
}

#[test]
fn a_killed_worker_s_job_is_taken_over_and_completes() {
    let cluster = start_cluster();
    let node = jobs_node(&cluster[..3], &["--set", "jobs.visibility_ms=500"]);
    let mut slow = Worker::start_cluster(&cluster[0], "slow", 150);
    let mut c = SseClient::open(node.addr, "/api/ask?q=take%20over", &[]);
    assert_eq!(c.status, 200, "{}", c.head);
    let mut events = vec![next_job_event(&mut c).expect("a token from the slow worker")];
    // The fast worker claims the slow one's entry after each visibility
    // window but is refused (NOTOWNER): the slow one keeps talking.
    let _fast = Worker::start_cluster(&cluster[1], "fast", 5);
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
    let retry_at = events
        .iter()
        .position(|(_, _, d)| d["attempt"] == 2)
        .expect("events of the second attempt");
    assert!(retry_at >= 8, "the first attempt's tokens came first");
    assert_eq!(text_of(&events[retry_at..]), whole);
    println!(
        "cluster takeover: {} events, the second attempt from event {retry_at}",
        events.len()
    );
}

/// `redis-cli -c` (following `MOVED`) against a cluster node: its output
/// lines.
fn cli(node: &RedisServer, args: &[&str]) -> Vec<String> {
    let out = Command::new("redis-cli")
        .args(["-c", "-p", &node.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// The value after field `name` in a printed stream entry.
fn field(lines: &[String], name: &str) -> Option<String> {
    let at = lines.iter().position(|l| l == name)?;
    lines.get(at + 1).cloned()
}

#[test]
fn a_job_run_by_hand_that_goes_quiet_fails_worker_stalled() {
    let cluster = start_cluster();
    let node = jobs_node(&cluster[..3], &["--set", "jobs.stall_ms=500"]);
    let mut c = SseClient::open(node.addr, "/api/ask?q=quiet", &[]);
    assert_eq!(c.status, 200, "{}", c.head);
    // The queue's name is in the config; the job's key is in its entry.
    let queue = cli(&cluster[0], &["HGET", "rx:jobs:config", "queue_ask"]);
    assert_eq!(queue, ["rx:{jobs}:ask"]);
    let read = cli(
        &cluster[0],
        &[
            "XREADGROUP",
            "GROUP",
            "workers",
            "cli",
            "COUNT",
            "1",
            "STREAMS",
            &queue[0],
            ">",
        ],
    );
    let key = field(&read, "key").unwrap_or_else(|| panic!("an entry: {read:?}"));
    let id = field(&read, "id").expect("the job id");
    assert_eq!(key, format!("rx:{{job:{id}}}:job"));
    let event = |kind: &str, body: &str| {
        let args = ["FCALL", "redix_job_event", "1", &key, "cli", kind, body];
        cli(&cluster[0], &args).join("\n")
    };
    let first = event("token", r#"{"text":"Hm"}"#);
    assert!(first.contains('-'), "a stream id: {first}");
    let other = cli(
        &cluster[0],
        &[
            "FCALL",
            "redix_job_event",
            "1",
            &key,
            "intruder",
            "token",
            r#"{"text":"x"}"#,
        ],
    );
    assert!(other.join(" ").starts_with("NOTOWNER"), "{other:?}");
    let events = read_job(&mut c);
    let (_, name, data) = events.last().expect("events").clone();
    assert_eq!((events.len(), name.as_str()), (2, "error"), "{events:?}");
    assert_eq!(data["code"], "worker_stalled");
    wait_until("the stall to be counted", || {
        node.metric("redix_jobs_stalled_total") == 1.0
            && node.metric("redix_jobs_failed_total") == 1.0
    });
    let pending = cli(&cluster[0], &["XPENDING", &queue[0], "workers"]);
    assert_eq!(
        pending.first().map(String::as_str),
        Some("0"),
        "{pending:?}"
    );
    assert!(event("token", r#"{"text":"back"}"#).starts_with("ENDED"));
}

#[test]
fn jobs_survive_a_function_flush_and_a_master_failover() {
    let mut cluster = start_cluster();
    let node = jobs_node(&cluster[..3], &[]);
    let _worker = Worker::start_cluster(&cluster[1], "w1", 1);
    // The library gone from every master: redix loads it again.
    for master in &cluster[..3] {
        let flushed = master.command(&["FUNCTION", "FLUSH"]).unwrap_or_default();
        assert!(flushed.starts_with("+OK"), "{flushed}");
    }
    let mut ask = SseClient::open(node.addr, "/api/ask?q=hello", &[]);
    assert_eq!(ask.status, 200, "{}", ask.head);
    let asked = read_job(&mut ask);
    assert_eq!(text_of(&asked), demo::tokens(Kind::Ask, "hello").concat());
    // The first master dies; its replica (with the library, replicated)
    // takes its slots.
    let victim = slots_of(&cluster[0]);
    cluster[0].kill();
    wait_until("not ready while a master is down", || {
        get(node.addr, "/readyz").0 == 503
    });
    wait_until("a replica to take over the dead master's slots", || {
        cluster[1]
            .command(&["CLUSTER", "INFO"])
            .is_some_and(|r| r.contains("cluster_state:ok"))
    });
    wait_until("ready again after the failover", || {
        get(node.addr, "/readyz").0 == 200
    });
    let mut found = None;
    let mut n = 0;
    wait_until("a job on the promoted replica's slots", || {
        n += 1;
        let url = format!("https://example.com/failover/{n}");
        let (status, accepted, _) = summarize(node.addr, &url, "?wait=0");
        let (Some(id), Some(stream)) = (accepted["jobId"].as_str(), accepted["stream"].as_str())
        else {
            assert_eq!(status, 503, "{accepted}");
            return false;
        };
        let slot = slot_of_job(&cluster[1], id);
        if victim.iter().any(|(a, b)| (*a..=*b).contains(&slot)) {
            found = Some((stream.to_string(), url));
        }
        found.is_some()
    });
    let (stream, url) = found.expect("a job");
    streams_to_done(node.addr, &stream, &url);
    println!("cluster failover: a job found on the promoted shard after {n} submissions");
}
