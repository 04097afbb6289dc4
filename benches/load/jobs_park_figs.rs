//! The parked requests' figures (the loop is in `jobs_park`), without sockets or clocks: what
//! they did, the lines and the `"parked"` JSON object a fanout block gets, and the comparison
//! of a fanout run without and with them, with its checks — every parked request answered
//! `202` pending, the requests held (in flight on average ≥ 95 % of `--jobs-clients`), and the
//! subscribers' p99 (a lost delivery counting as later than any received) within 2× of the run
//! without. Leaf module (std, serde_json, and the bench's `attack_figs` and `jobs_figs`), so
//! `tests/bench_self_test.rs` includes it.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::attack_figs::{grouped, Check};
use crate::jobs_figs::{check_table, msf, AnswerTally, JobsMetrics, Timing};

/// Acceptance: the parked requests in flight, on average over the publishing window, are at
/// least this share of `--jobs-clients`.
pub const PARKED_SHARE_MIN: f64 = 0.95;
/// Acceptance: the subscribers' p99 beside the parked requests at most this many times the
/// p99 without (the attacker's limit; the ratio itself is the figure to read).
pub const P99_RATIO_LIMIT: f64 = 2.0;

/// The requests held parked beside a fanout run.
#[derive(Clone)]
pub struct ParkFigs {
    pub clients: usize,
    pub wait_s: u32,
    /// seconds from the start until every client had a request in flight (None: never all)
    pub ramp_s: Option<f64>,
    pub posts: u64,
    pub tally: AnswerTally,
    pub reconnects: u64,
    /// write → whole answer, µs (≈ the `?wait=` when nothing works the jobs)
    pub answer: Timing,
    /// requests in flight (written, not yet answered), sampled every 100 ms over the window
    pub samples: u64,
    pub in_flight_sum: u64,
    pub in_flight_min: usize,
    pub in_flight_max: usize,
    /// seconds from the first publish to the end (the sampled window)
    pub window_s: f64,
    pub server: Option<JobsMetrics>,
}

impl ParkFigs {
    pub fn new(clients: usize, wait_s: u32) -> ParkFigs {
        ParkFigs {
            clients,
            wait_s,
            ramp_s: None,
            posts: 0,
            tally: AnswerTally::default(),
            reconnects: 0,
            answer: Timing::new(),
            samples: 0,
            in_flight_sum: 0,
            in_flight_min: usize::MAX,
            in_flight_max: 0,
            window_s: 0.0,
            server: None,
        }
    }

    pub fn sample(&mut self, in_flight: usize) {
        self.samples += 1;
        self.in_flight_sum += in_flight as u64;
        self.in_flight_min = self.in_flight_min.min(in_flight);
        self.in_flight_max = self.in_flight_max.max(in_flight);
    }

    pub fn in_flight_avg(&self) -> f64 {
        self.in_flight_sum as f64 / self.samples.max(1) as f64
    }

    fn min_or_0(&self) -> usize {
        if self.samples == 0 {
            0
        } else {
            self.in_flight_min
        }
    }

    /// "199.8 avg, min 196, max 200 (230 samples)"
    pub fn in_flight_cell(&self) -> String {
        format!(
            "{:.1} avg, min {}, max {} ({} samples over {:.1} s)",
            self.in_flight_avg(),
            self.min_or_0(),
            self.in_flight_max,
            self.samples,
            self.window_s
        )
    }
}

/// The lines a fanout block gets beside parked requests.
pub fn park_text(f: &ParkFigs) -> String {
    let mut s = String::new();
    let ramp = f.ramp_s.map_or("never all in flight".into(), |r| {
        format!("all in flight {r:.2} s after the start")
    });
    let _ = writeln!(
        s,
        "  parked requests     {} connections (one source address each) holding POST /api/summarize?wait={} for a new URL each, re-posted as each answer comes ({ramp}); {} posts, {} reconnects",
        f.clients, f.wait_s, grouped(f.posts), f.reconnects
    );
    let _ = writeln!(s, "  in flight           {}", f.in_flight_cell());
    let _ = writeln!(s, "  their answers       {}", f.tally.cell());
    if f.answer.hist.n > 0 {
        let h = &f.answer.hist;
        let _ = writeln!(
            s,
            "  answered after      min {} ms, mean {} ms, max {} ms (each from its write; ?wait={} s)",
            msf(f.answer.min()),
            msf(h.mean() as u64),
            msf(h.max),
            f.wait_s
        );
    }
    if let Some(m) = &f.server {
        let _ = writeln!(s, "  server jobs         {}", m.line());
    }
    s
}

/// The `"parked"` object of the fanout JSON line.
pub fn park_json(f: &ParkFigs) -> Value {
    json!({
        "clients": f.clients, "wait_s": f.wait_s, "ramp_s": f.ramp_s, "posts": f.posts,
        "reconnects": f.reconnects, "answers": f.tally.json(), "answer_after_us": f.answer.json(),
        "in_flight": {"avg": (f.in_flight_avg() * 10.0).round() / 10.0, "min": f.min_or_0(),
                      "max": f.in_flight_max, "samples": f.samples, "window_s": f.window_s},
        "server": f.server.as_ref().map(JobsMetrics::json),
    })
}

/// One fanout run's subscriber figures, for the with/without comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FanSide {
    pub p50_us: u64,
    pub p99_us: u64,
    /// p99 of all expected deliveries, a lost one counting as late; None when over 1 % lost
    pub p99_all_us: Option<u64>,
    pub received: u64,
    pub expected: u64,
    pub cpu_per_delivery_us: f64,
}

fn ratio(with: f64, without: f64) -> String {
    if without > 0.0 {
        format!("{:.2}×", with / without)
    } else {
        "—".into()
    }
}

/// The with/without table of one fanout run, its checks, and true when all passed.
pub fn compare_table(
    title: &str,
    base: &FanSide,
    with: &FanSide,
    park: &ParkFigs,
) -> (String, bool) {
    let lat = |sd: &FanSide| {
        let all = sd
            .p99_all_us
            .map_or("never".into(), |v| format!("{} ms", msf(v)));
        format!(
            "{} / {} ms (p99 counting lost as late: {all})",
            msf(sd.p50_us),
            msf(sd.p99_us)
        )
    };
    let got = |sd: &FanSide| format!("{} / {}", grouped(sd.received), grouped(sd.expected));
    let cpu = |sd: &FanSide| format!("{:.3} µs", sd.cpu_per_delivery_us);
    let ratios = format!(
        "p50 {}, p99 {}, CPU per delivery {}",
        ratio(with.p50_us as f64, base.p50_us as f64),
        ratio(with.p99_us as f64, base.p99_us as f64),
        ratio(with.cpu_per_delivery_us, base.cpu_per_delivery_us)
    );
    let rows = [
        ("subscribers' latency p50 / p99", lat(base), lat(with)),
        ("deliveries received / expected", got(base), got(with)),
        ("server CPU per delivery", cpu(base), cpu(with)),
        (
            "parked summarize requests in flight",
            "none".into(),
            park.in_flight_cell(),
        ),
        (
            "answers to the parked requests",
            "—".into(),
            park.tally.cell(),
        ),
        ("with / without", "".into(), ratios),
    ];
    let mut s = format!(
        "\n{title}\n| figure | without parked requests | with {} parked |\n|---|---|---|\n",
        park.clients
    );
    for (f, x, y) in rows {
        let _ = writeln!(s, "| {f} | {x} | {y} |");
    }
    let cs = park_checks(base, with, park);
    let all = cs.iter().all(|c| c.pass);
    s.push_str(&check_table(&cs));
    (s, all)
}

/// The parked pass's checks against the pass without.
pub fn park_checks(base: &FanSide, with: &FanSide, park: &ParkFigs) -> Vec<Check> {
    let (r, value) = match (base.p99_all_us, with.p99_all_us) {
        (Some(b), Some(w)) if b > 0 => {
            (w as f64 / b as f64, format!("{:.2}×", w as f64 / b as f64))
        }
        (None, _) => (f64::INFINITY, "the run without lost over 1 %".into()),
        (_, None) => (f64::INFINITY, "∞ (over 1 % lost)".into()),
        _ => (f64::INFINITY, "no latency without".into()),
    };
    let answered = park.tally.pending + park.tally.other + park.tally.errors;
    let none = if answered == 0 {
        " (none came back in the window)"
    } else {
        ""
    };
    vec![
        Check {
            what: "every parked request answered 202 pending",
            value: format!(
                "{} of {}{none}",
                grouped(park.tally.pending),
                grouped(answered)
            ),
            pass: park.tally.other == 0 && park.tally.errors == 0,
        },
        Check {
            what: "parked requests held: in flight on average ≥ 95 % of --jobs-clients",
            value: format!("{:.1} of {}", park.in_flight_avg(), park.clients),
            pass: park.samples > 0
                && park.in_flight_avg() >= PARKED_SHARE_MIN * park.clients as f64,
        },
        Check {
            what: "subscribers' p99 (lost = late) within 2× of the run without",
            value,
            pass: r <= P99_RATIO_LIMIT,
        },
    ]
}
