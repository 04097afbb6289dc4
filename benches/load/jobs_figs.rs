//! The jobs scenario's figures (the sockets are in `jobs_conn`, `jobs_submit`, `jobs_park`),
//! without sockets or clocks: the summarize request, what an answer was, the answers tallied,
//! the burst's figures, lines and JSON, and its acceptance checks — every answer a `202`
//! pending, the `?wait=0` p99 ≤ 5 ms, none of the window's answers before the window. The
//! parked requests' figures are in `jobs_park_figs`. Leaf module (std, serde_json, and the
//! bench's `hist` and `attack_figs`), so `tests/bench_self_test.rs` includes it.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::attack_figs::{grouped, Check};
use crate::hist::Histogram;

/// Acceptance: the burst's p99 from the write of a request to its whole `202` (accept and
/// enqueue) at most this, in µs.
pub const SUBMIT_P99_LIMIT_US: u64 = 5_000;
/// redix's quick-check window (`jobs.wait_ms`) unless the run sets it.
pub const DEFAULT_WINDOW_MS: u64 = 2_000;

/// `POST /api/summarize` (with `?wait=S` when given) for `url`, keep-alive.
pub fn summarize_request(host: &str, url: &str, wait_s: Option<u32>) -> Vec<u8> {
    let query = wait_s.map(|w| format!("?wait={w}")).unwrap_or_default();
    let body = json!({ "url": url }).to_string();
    format!(
        "POST /api/summarize{query} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A URL no request of the run used before: run tag, phase, round, client, sequence number.
pub fn job_url(tag: &str, phase: &str, round: usize, client: usize, seq: u64) -> String {
    format!("https://jobs-bench.example/{tag}/{phase}/r{round}/c{client}/n{seq}")
}

/// What the answer to a summarize was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `202` with `{"jobId":ID,"status":"pending","stream":"/api/ask?job=ID"}`
    Pending,
    /// anything else, in a few words ("503 jobs_unavailable", "200 …")
    Other(String),
}

/// Classifies an answer by its status and body.
pub fn classify(status: u16, body: &str) -> Answer {
    let v: Option<Value> = serde_json::from_str(body).ok();
    if status == 202 {
        let pending = v.as_ref().is_some_and(|v| {
            let id = v["jobId"].as_str().unwrap_or("");
            !id.is_empty()
                && v["status"] == "pending"
                && v["stream"].as_str() == Some(&format!("/api/ask?job={id}"))
        });
        if pending {
            return Answer::Pending;
        }
        return Answer::Other(format!("202 with an unexpected body: {}", short(body)));
    }
    match v.as_ref().and_then(|v| v["error"]["code"].as_str()) {
        Some(code) => Answer::Other(format!("{status} {code}")),
        None => Answer::Other(format!("{status} {}", short(body))),
    }
}

fn short(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The answers to a set of requests: 202 pending, other answers, and requests that got none
/// (connect or read failed, closed, or no answer in time).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnswerTally {
    pub pending: u64,
    pub other: u64,
    pub errors: u64,
    pub first_other: Option<String>,
    pub first_err: Option<String>,
}

impl AnswerTally {
    pub fn answer(&mut self, a: Answer) {
        match a {
            Answer::Pending => self.pending += 1,
            Answer::Other(what) => {
                self.other += 1;
                self.first_other.get_or_insert(what);
            }
        }
    }

    pub fn error(&mut self, e: String) {
        self.error_n(1, e);
    }

    /// `n` requests without an answer, for one reason.
    pub fn error_n(&mut self, n: u64, e: String) {
        self.errors += n;
        self.first_err.get_or_insert(e);
    }

    /// "2,000 × 202 pending; 0 other; 0 errors" (and the first of each kind of trouble)
    pub fn cell(&self) -> String {
        let mut s = format!(
            "{} × 202 pending; {} other; {} errors",
            grouped(self.pending),
            grouped(self.other),
            grouped(self.errors)
        );
        if let Some(o) = &self.first_other {
            let _ = write!(s, " (first other: {o})");
        }
        if let Some(e) = &self.first_err {
            let _ = write!(s, " (first error: {e})");
        }
        s
    }

    pub fn json(&self) -> Value {
        json!({"pending_202": self.pending, "other": self.other, "errors": self.errors,
               "first_other": self.first_other, "first_error": self.first_err})
    }
}

/// What the job engine's metrics said after a phase (`/metrics/prom`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JobsMetrics {
    pub pending: f64,
    pub submitted: f64,
    pub breaker_opened: f64,
    pub refused: f64,
}

impl JobsMetrics {
    pub fn line(&self) -> String {
        format!(
            "jobs pending {}, submitted {}, breaker opened {} times, engine queue refusals {} (redix /metrics/prom at the end)",
            grouped(self.pending as u64),
            grouped(self.submitted as u64),
            self.breaker_opened,
            self.refused
        )
    }

    pub fn json(&self) -> Value {
        json!({"jobs_pending": self.pending, "jobs_submitted": self.submitted,
               "breaker_opened": self.breaker_opened, "engine_refused": self.refused})
    }
}

/// Latencies: the histogram (≤ 3 % bucket width) and the exact minimum.
#[derive(Clone)]
pub struct Timing {
    pub hist: Histogram,
    pub min_us: u64,
}

impl Timing {
    pub fn new() -> Timing {
        Timing {
            hist: Histogram::new(),
            min_us: u64::MAX,
        }
    }

    pub fn record(&mut self, us: u64) {
        self.hist.record(us);
        self.min_us = self.min_us.min(us);
    }

    pub fn min(&self) -> u64 {
        if self.hist.n == 0 {
            0
        } else {
            self.min_us
        }
    }

    /// "p50 …  p90 …  p99 …  max …  (min …)" in ms
    pub fn line(&self) -> String {
        let h = &self.hist;
        format!(
            "p50 {}  p90 {}  p99 {}  max {}  (min {})",
            msf(h.percentile(50.0)),
            msf(h.percentile(90.0)),
            msf(h.percentile(99.0)),
            msf(h.max),
            msf(self.min())
        )
    }

    pub fn json(&self) -> Value {
        let h = &self.hist;
        json!({"p50": h.percentile(50.0), "p90": h.percentile(90.0), "p99": h.percentile(99.0),
               "max": h.max, "min": self.min(), "mean": h.mean().round(), "n": h.n})
    }
}

/// The burst rounds of one kind (`?wait=0`, or the server's window).
#[derive(Clone)]
pub struct BurstFigs {
    /// Some(s): `?wait=s`; None: no `?wait=` (the quick-check window)
    pub wait_s: Option<u32>,
    pub clients: usize,
    pub rounds: usize,
    /// write → whole answer, µs, every answer
    pub lat: Timing,
    pub round_p99_us: Vec<u64>,
    pub tally: AnswerTally,
    /// the longest a round's writes took, first to last, µs
    pub burst_spread_us: u64,
    /// redix CPU over the rounds (connections set up and closed included), ms
    pub server_cpu_ms: f64,
    /// the rounds' wall time, s; the generator's CPU and the whole box's over it, in % of
    /// one core (a busy "everything else" means the rounds were disturbed)
    pub wall_s: f64,
    pub loadgen_cpu_pct: f64,
    pub box_busy_pct: f64,
    pub server: Option<JobsMetrics>,
}

impl BurstFigs {
    pub fn new(wait_s: Option<u32>, clients: usize, rounds: usize) -> BurstFigs {
        BurstFigs {
            wait_s,
            clients,
            rounds,
            lat: Timing::new(),
            round_p99_us: vec![],
            tally: AnswerTally::default(),
            burst_spread_us: 0,
            server_cpu_ms: 0.0,
            wall_s: 0.0,
            loadgen_cpu_pct: 0.0,
            box_busy_pct: 0.0,
            server: None,
        }
    }

    pub fn expected(&self) -> u64 {
        (self.clients * self.rounds) as u64
    }

    fn what(&self) -> String {
        match self.wait_s {
            Some(w) => format!("POST /api/summarize?wait={w}"),
            None => "POST /api/summarize without ?wait= (the quick-check window)".into(),
        }
    }
}

/// µs as ms with two decimals.
pub fn msf(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// The text block of a burst.
pub fn burst_text(name: &str, f: &BurstFigs, window_ms: u64) -> String {
    let mut s = format!(
        "\n== {name} jobs submit: {} concurrent {}, no worker, {} round(s), a new URL each ==\n",
        f.clients,
        f.what(),
        f.rounds
    );
    let _ = writeln!(
        s,
        "  answers             {} of {}",
        f.tally.cell(),
        grouped(f.expected())
    );
    let _ = writeln!(
        s,
        "  latency (ms)        write → whole answer: {}",
        f.lat.line()
    );
    if f.wait_s.is_none() && f.lat.hist.n > 0 {
        let (h, w) = (&f.lat.hist, window_ms * 1000);
        let _ = writeln!(
            s,
            "  after the window    min +{} ms, mean +{} ms, max +{} ms (the {window_ms} ms window; the percentiles above are histogram buckets of ~3 %)",
            msf(f.lat.min().saturating_sub(w)),
            msf((h.mean() as u64).saturating_sub(w)),
            msf(h.max.saturating_sub(w))
        );
    }
    let p99s: Vec<String> = f.round_p99_us.iter().map(|&v| msf(v)).collect();
    let _ = writeln!(s, "  p99 per round (ms)  {}", p99s.join(" "));
    let _ = writeln!(
        s,
        "  burst               a round's {} writes took at most {} ms first to last (each timed from its own write)",
        f.clients,
        msf(f.burst_spread_us)
    );
    let per = f.server_cpu_ms * 1000.0 / f.expected().max(1) as f64;
    let _ = writeln!(
        s,
        "  server CPU          {:.0} ms over the rounds → {per:.0} µs per request (connection setup and close included)",
        f.server_cpu_ms
    );
    let server_pct = f.server_cpu_ms / 10.0 / f.wall_s.max(1e-9);
    let other = (f.box_busy_pct - server_pct - f.loadgen_cpu_pct).max(0.0);
    let _ = writeln!(
        s,
        "  box                 {:.0} % of one core busy over the {:.1} s of rounds: server {server_pct:.0} %, generator {:.0} %, everything else {other:.0} %",
        f.box_busy_pct, f.wall_s, f.loadgen_cpu_pct
    );
    if let Some(m) = &f.server {
        let _ = writeln!(s, "  server              {}", m.line());
    }
    s
}

pub fn burst_json(f: &BurstFigs) -> Value {
    json!({
        "bench": "load", "target": "redix", "mode": "embedded", "scenario": "jobs_submit",
        "wait_s": f.wait_s, "clients": f.clients, "rounds": f.rounds, "expected": f.expected(),
        "answers": f.tally.json(), "latency_us": f.lat.json(),
        "round_p99_us": f.round_p99_us, "burst_spread_us": f.burst_spread_us,
        "server_cpu_ms": f.server_cpu_ms, "wall_s": (f.wall_s * 100.0).round() / 100.0,
        "loadgen_cpu_pct": f.loadgen_cpu_pct.round(), "box_busy_pct": f.box_busy_pct.round(),
        "server": f.server.as_ref().map(JobsMetrics::json),
    })
}

/// The burst's checks: `?wait=0` all 202 within the p99 limit; the window's all 202, none
/// before the window (`window_ms`, with 1 % slack for the server's ms timer).
pub fn submit_checks(zero: &BurstFigs, window: Option<&BurstFigs>, window_ms: u64) -> Vec<Check> {
    let all = |f: &BurstFigs| f.tally.pending == f.expected() && f.expected() > 0;
    let p99 = zero.lat.hist.percentile(99.0);
    let mut cs = vec![
        Check {
            what: "every ?wait=0 answer is 202 pending",
            value: format!(
                "{} of {}",
                grouped(zero.tally.pending),
                grouped(zero.expected())
            ),
            pass: all(zero),
        },
        Check {
            what: "?wait=0 p99, write → whole 202 (accept and enqueue) ≤ 5 ms",
            value: format!("{} ms", msf(p99)),
            pass: zero.lat.hist.n > 0 && p99 <= SUBMIT_P99_LIMIT_US,
        },
    ];
    if let Some(w) = window {
        let first = w.lat.min();
        cs.push(Check {
            what: "every default-window answer is 202 pending, none before the window",
            value: format!(
                "{} of {}; first after {} ms (window {window_ms} ms)",
                grouped(w.tally.pending),
                grouped(w.expected()),
                msf(first)
            ),
            pass: all(w) && first * 100 >= window_ms * 1000 * 99,
        });
    }
    cs
}

/// The checks as a table, with a verdict line.
pub fn check_table(cs: &[Check]) -> String {
    let mut s = String::from("\n| acceptance check | measured | result |\n|---|---|---|\n");
    for c in cs {
        let verdict = if c.pass { "PASS" } else { "FAIL" };
        let _ = writeln!(s, "| {} | {} | {verdict} |", c.what, c.value);
    }
    let all = cs.iter().all(|c| c.pass);
    let _ = writeln!(s, "verdict: {}", if all { "PASS" } else { "FAIL" });
    s
}
