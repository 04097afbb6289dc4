//! The pipelining attacker's figures (the threads are in `attack`), without sockets or clocks:
//! the pipelined request stream, the `/readyz` tally, the lines and JSON a fanout run under
//! attack adds, and the with/without comparison with the hardening fix's acceptance checks
//! (RSS growth < 16 MiB, subscribers' p99 within 2× of the run without the attacker, `/readyz`
//! always 200). The p99 of the checks counts a lost delivery as later than any received one:
//! a stalled reactor starves its subscribers, and the p99 of what did arrive hides that. Leaf module (std and serde_json), so `tests/bench_self_test.rs` includes it.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// Acceptance: the server's RSS may grow by less than this while attacked (peak − before).
pub const RSS_GROWTH_LIMIT_KIB: u64 = 16 * 1024;
/// Acceptance: subscribers' p99 under attack at most this many times the p99 without.
pub const P99_RATIO_LIMIT: f64 = 2.0;

/// The request the attacker pipelines.
pub fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

/// `req` repeated to at least `min` bytes: always a whole number of requests, so writing it
/// round and round (an offset modulo its length) is one unbroken pipeline.
pub fn pipeline_buf(req: &[u8], min: usize) -> Vec<u8> {
    let n = min.div_ceil(req.len().max(1)).max(1);
    req.repeat(n)
}

/// Requests completed by the bytes `n` of one connection's stream that follow its first
/// `sent` bytes (requests of `req_len` bytes each, back to back).
pub fn requests_completed(sent: u64, n: u64, req_len: u64) -> u64 {
    (sent + n) / req_len - sent / req_len
}

/// What one `/readyz` probe saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    Status(u16),
    /// no complete answer within the probe timeout (2 s)
    Timeout,
    /// refused, reset, closed before an answer, or an unparsable answer
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// when it started, ms after the attack began
    pub at_ms: u64,
    pub outcome: ProbeOutcome,
    pub lat_us: u64,
}

/// `/readyz`: 200s, other statuses and errors, timeouts, and the slowest probe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeTally {
    pub ok: usize,
    pub non_200: usize,
    pub timeouts: usize,
    pub max_lat_us: u64,
}

impl ProbeTally {
    pub fn of(probes: &[Probe]) -> ProbeTally {
        let mut t = ProbeTally::default();
        for p in probes {
            match p.outcome {
                ProbeOutcome::Status(200) => t.ok += 1,
                ProbeOutcome::Timeout => t.timeouts += 1,
                _ => t.non_200 += 1,
            }
            t.max_lat_us = t.max_lat_us.max(p.lat_us);
        }
        t
    }

    /// Every probe answered 200 (and there was at least one).
    pub fn always_200(&self) -> bool {
        self.ok > 0 && self.non_200 == 0 && self.timeouts == 0
    }
}

/// One pass's attacker, server RSS and `/readyz` figures.
#[derive(Clone, Debug, Default)]
pub struct AttackFigs {
    /// false for the first pass of `--attacker compare` (RSS and `/readyz` sampled, no attack)
    pub attacking: bool,
    pub conns: usize,
    pub src: String,
    pub path: String,
    /// seconds from the start of the attack to its end (the guard may end it early)
    pub attack_s: f64,
    pub bytes_sent: u64,
    pub requests_sent: u64,
    /// the server closed the connection (or a write failed) and the attacker reconnected
    pub reconnects: u64,
    pub connect_errors: u64,
    /// time the attackers' writes waited on a full socket (the server not reading), summed
    pub write_blocked_s: f64,
    pub last_close: Option<String>,
    pub rss_before_kib: u64,
    pub rss_end_kib: u64,
    pub rss_peak_kib: u64,
    /// after the drain, when the fanout figures are read: an unfixed server keeps working off
    /// the requests already in its socket buffer after the attack stops
    pub rss_after_kib: u64,
    /// VmRSS every 500 ms from the start of the attack
    pub rss_series_kib: Vec<u64>,
    pub rss_cap_kib: u64,
    /// the guard stopped the attack: (seconds in, VmRSS in KiB)
    pub guard: Option<(f64, u64)>,
    pub probes: Vec<Probe>,
    pub probe_first_err: Option<String>,
}

impl AttackFigs {
    /// the most VmRSS seen (peak, end of the attack, after the drain) − before
    pub fn growth_kib(&self) -> u64 {
        self.rss_peak_kib
            .max(self.rss_end_kib)
            .max(self.rss_after_kib)
            .saturating_sub(self.rss_before_kib)
    }

    pub fn tally(&self) -> ProbeTally {
        ProbeTally::of(&self.probes)
    }
}

/// `1234567` → `"1,234,567"`.
pub fn grouped(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn msf(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// `/readyz` in one cell: "10 × 200, 0 non-200, 0 timeouts; max 1.23 ms".
pub fn readyz_cell(t: &ProbeTally) -> String {
    format!(
        "{} × 200, {} non-200, {} timeouts; max {} ms",
        t.ok,
        t.non_200,
        t.timeouts,
        msf(t.max_lat_us)
    )
}

/// The probes in order, one word each: "200/1.2" (status/ms), "T" (timeout), "E" (error).
pub fn probe_line(probes: &[Probe]) -> String {
    let words: Vec<String> = probes
        .iter()
        .map(|p| match p.outcome {
            ProbeOutcome::Status(s) => format!("{s}/{:.1}", p.lat_us as f64 / 1000.0),
            ProbeOutcome::Timeout => "T".into(),
            ProbeOutcome::Error => "E".into(),
        })
        .collect();
    words.join(" ")
}

/// The lines a fanout block gets under `--attacker`.
pub fn text(f: &AttackFigs) -> String {
    let mut s = String::new();
    if f.attacking {
        let _ = writeln!(
            s,
            "  attacker            {} conn(s) from {} pipelining GET {} for {:.1} s, never reading: {} bytes, {} requests sent; {} reconnects (server closed it / write failed), {} connect errors; writes blocked {:.1} s in all{}",
            f.conns, f.src, f.path, f.attack_s, grouped(f.bytes_sent), grouped(f.requests_sent), f.reconnects,
            f.connect_errors, f.write_blocked_s,
            f.last_close.as_deref().map(|c| format!(" (last close: {c})")).unwrap_or_default()
        );
    } else {
        let _ = writeln!(
            s,
            "  attacker            none (this pass only samples RSS and /readyz, as under attack)"
        );
    }
    if let Some((at, kib)) = f.guard {
        let _ = writeln!(
            s,
            "  ATTACK STOPPED      at {at:.1} s: server RSS {} passed the {} cap — a failure",
            mib(kib),
            mib(f.rss_cap_kib)
        );
    }
    let _ = writeln!(
        s,
        "  server RSS (attack) before {}, peak {}, at the end {}, after the drain {} (growth {}; VmRSS every 500 ms)",
        mib(f.rss_before_kib),
        mib(f.rss_peak_kib),
        mib(f.rss_end_kib),
        mib(f.rss_after_kib),
        mib(f.growth_kib())
    );
    let every_s: Vec<String> = f
        .rss_series_kib
        .iter()
        .step_by(2)
        .map(|k| format!("{:.0}", *k as f64 / 1024.0))
        .collect();
    let _ = writeln!(s, "  RSS each second     {} MiB", every_s.join(" "));
    let _ = writeln!(s, "  /readyz (2 s limit) {}", readyz_cell(&f.tally()));
    let _ = writeln!(s, "  /readyz each second {}", probe_line(&f.probes));
    if let Some(e) = &f.probe_first_err {
        let _ = writeln!(s, "  /readyz first error {e}");
    }
    s
}

/// The `"attack"` object of the fanout JSON line.
pub fn json(f: &AttackFigs) -> Value {
    let t = f.tally();
    json!({
        "attacker": if f.attacking { "pipeline" } else { "none" },
        "conns": f.conns, "src": f.src, "path": f.path, "attack_s": (f.attack_s * 100.0).round() / 100.0,
        "bytes_sent": f.bytes_sent, "requests_sent": f.requests_sent,
        "reconnects": f.reconnects, "connect_errors": f.connect_errors,
        "write_blocked_s": (f.write_blocked_s * 100.0).round() / 100.0, "last_close": f.last_close,
        "rss_before_kib": f.rss_before_kib, "rss_peak_kib": f.rss_peak_kib, "rss_end_kib": f.rss_end_kib, "rss_after_drain_kib": f.rss_after_kib,
        "rss_growth_kib": f.growth_kib(), "rss_every_500ms_kib": f.rss_series_kib,
        "rss_cap_kib": f.rss_cap_kib, "stopped_by_guard": f.guard.is_some(),
        "stopped_at_s": f.guard.map(|g| g.0),
        "readyz": {"probes": f.probes.len(), "ok_200": t.ok, "non_200": t.non_200,
                   "timeouts": t.timeouts, "max_latency_us": t.max_lat_us,
                   "first_error": f.probe_first_err},
    })
}

/// The percentile of the received deliveries' latencies that is the `pct` percentile of all
/// `expected`, a lost delivery counting as later than any received: None when more than
/// 100 − `pct` % were lost (that percentile is then "never").
pub fn pct_counting_lost(pct: f64, received: u64, expected: u64) -> Option<f64> {
    if received == 0 || expected == 0 {
        return None;
    }
    let q = pct * expected as f64 / received as f64;
    (q <= 100.0).then_some(q)
}

/// One pass of the comparison: the subscribers' figures and the attack's.
pub struct Side<'a> {
    pub p50_us: u64,
    /// p99 of the received deliveries
    pub p99_us: u64,
    /// p99 of all expected deliveries, lost ones counting as late; None when over 1 % were lost
    pub p99_all_us: Option<u64>,
    pub received: u64,
    pub expected: u64,
    pub figs: &'a AttackFigs,
}

/// One acceptance check: what, the measured value, passed.
#[derive(Debug, PartialEq)]
pub struct Check {
    pub what: &'static str,
    pub value: String,
    pub pass: bool,
}

/// The acceptance checks of the attacked pass against the pass without.
pub fn checks(base: &Side, att: &Side) -> Vec<Check> {
    let (ratio, p99_value) = match (base.p99_all_us, att.p99_all_us) {
        (Some(b), Some(a)) if b > 0 => {
            let r = a as f64 / b as f64;
            (r, format!("{r:.2}×"))
        }
        (None, _) => (f64::INFINITY, "the run without lost over 1 %".into()),
        (_, None) => (f64::INFINITY, format!("∞ ({} lost)", lost_pct(att))),
        _ => (f64::INFINITY, "no latency without".into()),
    };
    let growth = att.figs.growth_kib();
    let t = att.figs.tally();
    vec![
        Check {
            what: "server RSS growth under attack < 16 MiB",
            value: mib(growth),
            pass: growth < RSS_GROWTH_LIMIT_KIB && att.figs.guard.is_none(),
        },
        Check {
            what: "subscribers' p99 (lost = late) within 2× of the run without",
            value: p99_value,
            pass: ratio <= P99_RATIO_LIMIT,
        },
        Check {
            what: "/readyz always 200 under attack",
            value: format!("{} of {}", t.ok, att.figs.probes.len()),
            pass: t.always_200(),
        },
    ]
}

fn lost_pct(sd: &Side) -> String {
    let lost = sd.expected.saturating_sub(sd.received);
    format!("{:.1} %", lost as f64 * 100.0 / sd.expected.max(1) as f64)
}

fn loss(sd: &Side) -> String {
    format!(
        "{} / {} ({} lost = {})",
        grouped(sd.received),
        grouped(sd.expected),
        grouped(sd.expected.saturating_sub(sd.received)),
        lost_pct(sd)
    )
}

/// "p50 / p99 ms (p99 counting lost: …)"
fn latency_cell(sd: &Side) -> String {
    format!(
        "{} / {} ms (p99 counting lost as late: {})",
        msf(sd.p50_us),
        msf(sd.p99_us),
        sd.p99_all_us
            .map_or("never".into(), |v| format!("{} ms", msf(v)))
    )
}

/// The with/without table of one fanout run and its checks; true when every check passed.
pub fn compare_table(title: &str, base: &Side, att: &Side) -> (String, bool) {
    let (b, a) = (base.figs, att.figs);
    let rss = |f: &AttackFigs| {
        format!(
            "{} → peak {} → end {} → after drain {} (+{})",
            mib(f.rss_before_kib),
            mib(f.rss_peak_kib),
            mib(f.rss_end_kib),
            mib(f.rss_after_kib),
            mib(f.growth_kib())
        )
    };
    let rows = [
        (
            "subscribers' latency p50 / p99",
            latency_cell(base),
            latency_cell(att),
        ),
        ("deliveries received / expected", loss(base), loss(att)),
        (
            "server RSS before → peak → end → after drain",
            rss(b),
            rss(a),
        ),
        (
            "/readyz (2 s limit)",
            readyz_cell(&b.tally()),
            readyz_cell(&a.tally()),
        ),
        (
            "attacker bytes / requests / reconnects",
            "—".into(),
            format!(
                "{} / {} / {}",
                grouped(a.bytes_sent),
                grouped(a.requests_sent),
                a.reconnects
            ),
        ),
    ];
    let mut s =
        format!("\n{title}\n| figure | without attacker | with attacker |\n|---|---|---|\n");
    for (f, x, y) in rows {
        let _ = writeln!(s, "| {f} | {x} | {y} |");
    }
    let cs = checks(base, att);
    let _ = writeln!(
        s,
        "\n| acceptance check | measured | result |\n|---|---|---|"
    );
    for c in &cs {
        let verdict = if c.pass { "PASS" } else { "FAIL" };
        let _ = writeln!(s, "| {} | {} | {verdict} |", c.what, c.value);
    }
    if let Some((at, kib)) = a.guard {
        let _ = writeln!(
            s,
            "attack stopped by the guard at {at:.1} s (server RSS {} > {})",
            mib(kib),
            mib(a.rss_cap_kib)
        );
    }
    let all = cs.iter().all(|c| c.pass);
    let _ = writeln!(s, "verdict: {}", if all { "PASS" } else { "FAIL" });
    (s, all)
}
