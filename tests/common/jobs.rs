//! Job clients: a summarize request, a job stream read to its end, the
//! text its tokens make; the example worker as a process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use super::http::{raw_exchange, status_of};
use super::redis::RedisServer;
use super::sse::SseClient;

/// One event of a job stream as a client sees it: (id, event name, data).
pub type JobEvent = (String, String, Value);

/// `POST /api/summarize{query}` for `url`: (status, JSON body, head).
pub fn summarize(addr: SocketAddr, url: &str, query: &str) -> (u16, Value, String) {
    let body = serde_json::json!({ "url": url }).to_string();
    let path = format!("/api/summarize{query}");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let text = raw_exchange(addr, req.as_bytes());
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status_of(&text), json, head.to_string())
}

/// The next event of a job stream, `None` when the server ended it.
pub fn next_job_event(c: &mut SseClient) -> Option<JobEvent> {
    let ev = c.next_message()?;
    let v: Value = serde_json::from_str(&ev.data).expect("json");
    let kind = ev.event.clone().unwrap_or_default();
    Some((ev.id.unwrap_or_default(), kind, v["data"].clone()))
}

/// Every event of a job stream until the server ends it after `done` or
/// `error` (asserted).
pub fn read_job(c: &mut SseClient) -> Vec<JobEvent> {
    let mut out = Vec::new();
    while let Some(ev) = next_job_event(c) {
        let end = ev.1 == "done" || ev.1 == "error";
        out.push(ev);
        if end {
            assert!(
                c.next_event().is_none(),
                "the stream ends after {}",
                out[out.len() - 1].1
            );
            break;
        }
    }
    out
}

/// The text of the `token` events, in order.
pub fn text_of(events: &[JobEvent]) -> String {
    events
        .iter()
        .filter(|(_, kind, _)| kind == "token")
        .map(|(_, _, d)| d["text"].as_str().unwrap_or_default())
        .collect()
}

/// The example worker, built once per test run (a stale build would test
/// old code; a fresh one is a no-op).
pub fn worker_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_BIN_EXE_redix"))
            .parent()
            .expect("target dir")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--example", "worker"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.ends_with("release") {
            build.arg("--release");
        }
        // What cargo set for this test run: some build scripts rebuild
        // when they see it change (ring reads CARGO_MANIFEST_DIR).
        let ours = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ];
        for (key, _) in std::env::vars() {
            if ours.iter().any(|p| key.starts_with(p)) || key == "CARGO_TARGET_TMPDIR" {
                build.env_remove(key);
            }
        }
        let status = build.status().expect("cargo build --example worker");
        assert!(status.success(), "building examples/worker.rs failed");
        dir.join("examples").join("worker")
    })
    .clone()
}

/// An `examples/worker.rs` process, killed on drop.
pub struct Worker(Child);

impl Worker {
    pub fn start(redis: &RedisServer, name: &str, token_ms: u64) -> Worker {
        Worker::start_with(
            &["--redis", &redis.url(), "--prefix", "redix:"],
            name,
            token_ms,
        )
    }

    /// A worker of a Redis Cluster (`seed` one of its nodes), prefix `rx:`.
    pub fn start_cluster(seed: &RedisServer, name: &str, token_ms: u64) -> Worker {
        let url = seed.url();
        let args = ["--cluster", "--redis", &url, "--prefix", "rx:"];
        Worker::start_with(&args, name, token_ms)
    }

    fn start_with(args: &[&str], name: &str, token_ms: u64) -> Worker {
        let child = Command::new(worker_bin())
            .args(args)
            .args(["--name", name])
            .args(["--token-ms", &token_ms.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the worker");
        Worker(child)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}
