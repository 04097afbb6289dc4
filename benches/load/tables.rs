//! The tables at the end of a run: the comparison with the DESIGN.md targets (round 1 of
//! every server × transport × mode) and, with `--rounds` > 1, one row per round.

use std::fmt::Write as _;

use crate::attack_figs::{compare_table, pct_counting_lost, Side};
use crate::cli::{fanout_plan, Args, Mode, Pass, ScenarioSel, Transport, TransportSel};
use crate::fanout::{per_delivery_us, FanoutResult};
use crate::floor::Floor;
use crate::idle::IdleResult;
use crate::output::label;
use crate::plan::SubRate;
use crate::server::Kind;
use crate::support::report::{ms, thousands};

pub struct TargetResult {
    pub kind: Kind,
    pub mode: Mode,
    pub transport: Transport,
    /// `--attacker`: which pass this run belongs to
    pub pass: Pass,
    /// one per round; the comparison table shows round 1 (a fresh server)
    pub idle: Vec<IdleResult>,
    pub fanout: Vec<FanoutResult>,
    pub errors: Vec<String>,
    pub note: String,
    pub exit: String,
}

/// One row of the comparison table: figure, target, one cell per server.
type Row = (String, String, Vec<String>);

/// Each server's cells of one fanout run, from a figure of that run.
type RunCells<'a> = dyn Fn(&dyn Fn(&FanoutResult) -> String) -> Vec<String> + 'a;

pub fn comparison_table(results: &[TargetResult], a: &Args) -> String {
    let mut rows: Vec<Row> = Vec::new();
    if a.scenario != ScenarioSel::Fanout {
        idle_rows(results, a, &mut rows);
    }
    let any_redis = results.iter().any(|r| r.mode == Mode::Redis);
    if a.scenario != ScenarioSel::Idle {
        for sr in fanout_plan(a) {
            fanout_rows(results, sr, &mut rows);
            cost_rows(results, sr, any_redis, &mut rows);
        }
    }
    let mut s = String::from("\n| figure | target |");
    for r in results {
        let _ = write!(
            s,
            " {}{} |",
            label(r.kind, r.mode, r.transport, a),
            r.pass.tag()
        );
    }
    s.push_str("\n|---|---|");
    for _ in results {
        s.push_str("---|");
    }
    s.push('\n');
    for (f, t, cells) in rows {
        let _ = write!(s, "| {f} | {t} |");
        for c in cells {
            let _ = write!(s, " {c} |");
        }
        s.push('\n');
    }
    s
}

/// Each server's cells, "—" where it has no figure.
fn cells(results: &[TargetResult], f: &dyn Fn(&TargetResult) -> Option<String>) -> Vec<String> {
    results
        .iter()
        .map(|r| f(r).unwrap_or_else(|| "—".into()))
        .collect()
}

/// Each server's cells for the round-1 fanout run `sr`.
fn fanout_cells(
    results: &[TargetResult],
    sr: SubRate,
    f: &dyn Fn(&FanoutResult) -> String,
) -> Vec<String> {
    cells(results, &|r| {
        r.fanout
            .iter()
            .find(|x| x.subs == sr.subs && x.rate == sr.rate && x.round == 1)
            .map(f)
    })
}

/// The DESIGN.md targets of one run; empty where it sets none.
#[derive(Default)]
struct Targets {
    p99: &'static str,
    cpu: &'static str,
    deliveries: &'static str,
    /// CPU per delivery ÷ the paced floor
    floor_ratio: &'static str,
    /// p99 ÷ the p99 the floor allows
    floor_p99: &'static str,
}

/// The standard runs' targets: 1,000 subscribers at 20 events/s (one event per write) and at
/// 1,000 events/s (writes coalesce).
fn targets(sr: SubRate) -> Targets {
    match (sr.subs == 1000, sr.rate as u64) {
        (true, 20) => Targets {
            floor_ratio: "≤ 1.15×",
            floor_p99: "≤ 1.2×",
            ..Targets::default()
        },
        (true, 1000) => Targets {
            p99: "p99 ≤ 100 ms",
            cpu: "≤ 0.5 µs",
            deliveries: "≥ 990k/s",
            ..Targets::default()
        },
        _ => Targets::default(),
    }
}

/// RSS per idle connection, setup rate, ready / failed.
fn idle_rows(results: &[TargetResult], a: &Args, rows: &mut Vec<Row>) {
    let cell = |f: &dyn Fn(&TargetResult) -> Option<String>| cells(results, f);
    let (what, target) = match a.transport {
        TransportSel::Sse => ("SSE conn", "≤ 256 B"),
        TransportSel::Ws => ("WebSocket", "≤ 384 B"),
        TransportSel::Both => ("conn", "≤ 256 B SSE, ≤ 384 B WS"),
    };
    rows.push((
        format!("idle: RSS per idle {what} ({} conns)", a.conns),
        target.into(),
        cell(&|r| {
            r.idle.first().map(|i| {
                format!(
                    "{:.2} KiB ({} B)",
                    i.per_conn_bytes / 1024.0,
                    thousands(i.per_conn_bytes)
                )
            })
        }),
    ));
    rows.push((
        "idle: connection setup".into(),
        "≥ 20k handshakes/s".into(),
        cell(&|r| {
            r.idle
                .first()
                .map(|i| format!("{}/s", thousands(i.handshakes_per_s)))
        }),
    ));
    rows.push((
        "idle: connections ready / failed".into(),
        "".into(),
        cell(&|r| {
            r.idle
                .first()
                .map(|i| format!("{} / {}", i.ready, i.failed))
        }),
    ));
}

/// Deliveries, loss, publish rate and latency of fanout run `sr`.
fn fanout_rows(results: &[TargetResult], sr: SubRate, rows: &mut Vec<Row>) {
    let tag = format!("fanout {}×{}/s", sr.subs, sr.rate);
    let t = targets(sr);
    let g = |f: &dyn Fn(&FanoutResult) -> String| fanout_cells(results, sr, f);
    rows.push((
        format!("{tag}: deliveries/s received"),
        t.deliveries.into(),
        g(&|f| format!("{}/s", thousands(f.deliveries_per_s))),
    ));
    rows.push((
        format!("{tag}: received / expected (lost)"),
        "no loss".into(),
        g(&|f| {
            format!(
                "{} / {} ({})",
                thousands(f.received as f64),
                thousands(f.expected as f64),
                thousands(f.lost as f64)
            )
        }),
    ));
    rows.push((
        format!("{tag}: events published/s"),
        format!("{}/s", sr.rate),
        g(&|f| format!("{:.1}/s", f.publish_rate)),
    ));
    rows.push((
        format!("{tag}: latency p50 / p99 / p99.9 / max"),
        t.p99.into(),
        g(&|f| {
            format!(
                "{} / {} / {} / {} ms",
                ms(f.hist.percentile(50.0)),
                ms(f.hist.percentile(99.0)),
                ms(f.hist.percentile(99.9)),
                ms(f.hist.max)
            )
        }),
    ));
}

/// Per-node latency (Redis mode), CPU, RSS and the generator's share of fanout run `sr`.
fn cost_rows(results: &[TargetResult], sr: SubRate, any_redis: bool, rows: &mut Vec<Row>) {
    let tag = format!("fanout {}×{}/s", sr.subs, sr.rate);
    let t = targets(sr);
    let g = |f: &dyn Fn(&FanoutResult) -> String| fanout_cells(results, sr, f);
    if any_redis {
        rows.push((
            format!("{tag}: latency p50 / p99 per node (A; B; …)"),
            "".into(),
            g(&|f| {
                let v: Vec<String> = f
                    .nodes
                    .iter()
                    .map(|n| match n.hist.n {
                        0 => format!("{}: nothing received", n.name),
                        _ => format!(
                            "{}: {} / {} ms",
                            n.name,
                            ms(n.hist.percentile(50.0)),
                            ms(n.hist.percentile(99.0))
                        ),
                    })
                    .collect();
                if v.is_empty() {
                    "—".into()
                } else {
                    v.join("; ")
                }
            }),
        ));
    }
    rows.push((
        format!("{tag}: server CPU per delivery"),
        t.cpu.into(),
        g(&|f| format!("{:.3} µs", f.cpu_per_delivery_us)),
    ));
    rows.push((
        format!("{tag}: events per writev (redix's counters)"),
        String::new(),
        g(&|f| {
            f.events_per_write
                .map_or_else(|| "—".into(), |e| format!("{e:.2}"))
        }),
    ));
    if results
        .iter()
        .any(|r| r.fanout.iter().any(|f| f.floor.is_some()))
    {
        floor_rows(&tag, &t, &g, rows);
    }
    if any_redis {
        rows.push((
            format!("{tag}: redis-server CPU per delivery / per event"),
            "".into(),
            g(&|f| match f.redis_cpu_ms {
                Some(m) => format!(
                    "{:.3} µs / {:.1} µs",
                    per_delivery_us(m, f.received),
                    per_delivery_us(m, f.published_ok)
                ),
                None => "—".into(),
            }),
        ));
    }
    rows.push((
        format!("{tag}: server RSS at end"),
        "".into(),
        g(&|f| format!("{} KiB", thousands(f.rss_end as f64))),
    ));
    rows.push((
        format!("{tag}: load generator CPU / whole box busy"),
        "".into(),
        g(&|f| format!("{:.0} % / {:.0} %", f.loadgen_cpu_pct, f.box_busy_pct)),
    ));
}

/// `--floor`: CPU per delivery as a ratio to the write floor measured right after the run,
/// and p99 against the p99 one event per write allows (every subscriber's write at the
/// paced floor, over the box's cores).
fn floor_rows(tag: &str, t: &Targets, g: &RunCells, rows: &mut Vec<Row>) {
    let with_floor = |f: &FanoutResult, cell: &dyn Fn(&Floor) -> String| {
        f.floor.as_ref().map_or_else(|| "—".into(), cell)
    };
    rows.push((
        format!("{tag}: CPU per delivery ÷ write floor (paced; back to back)"),
        t.floor_ratio.into(),
        g(&|f| {
            with_floor(f, &|fl| {
                let us = f.cpu_per_delivery_us;
                format!(
                    "{:.2}× ({:.2} µs); {:.2}× ({:.2} µs)",
                    us / fl.paced_us,
                    fl.paced_us,
                    us / fl.back_to_back_us,
                    fl.back_to_back_us
                )
            })
        }),
    ));
    rows.push((
        format!("{tag}: p99 ÷ p99 the floor allows (subs × paced floor ÷ cores)"),
        t.floor_p99.into(),
        g(&|f| {
            with_floor(f, &|fl| {
                let allowed = fl.allowed_p99_us(f.subs);
                let p99 = f.hist.percentile(99.0) as f64;
                format!("{:.1}× ({} ms)", p99 / allowed.max(1.0), ms(allowed as u64))
            })
        }),
    ));
}

/// With --rounds > 1: one row per target and round, to show the spread.
pub fn rounds_table(results: &[TargetResult], a: &Args) -> String {
    let plan = fanout_plan(a);
    let mut s = String::from("\n| target | round | idle RSS/conn | idle setup |");
    for SubRate { subs, rate } in &plan {
        let _ = write!(
            s,
            " {subs}×{rate}/s: deliveries/s, p50 / p99, CPU/delivery, other CPU |"
        );
    }
    s.push_str("\n|---|---|---|---|");
    for _ in &plan {
        s.push_str("---|");
    }
    s.push('\n');
    for t in results {
        for round in 1..=a.rounds.max(1) {
            let idle = t.idle.iter().find(|i| i.round == round);
            let _ = write!(
                s,
                "| {} | {round} | {} | {} |",
                label(t.kind, t.mode, t.transport, a),
                idle.map(|i| format!("{} B", thousands(i.per_conn_bytes)))
                    .unwrap_or_else(|| "—".into()),
                idle.map(|i| format!("{}/s", thousands(i.handshakes_per_s)))
                    .unwrap_or_else(|| "—".into())
            );
            for &SubRate { subs, rate } in &plan {
                let cell = t
                    .fanout
                    .iter()
                    .find(|f| f.round == round && f.subs == subs && f.rate == rate)
                    .map(|f| {
                        format!(
                            "{}/s, {} / {} ms, {:.2} µs, {:.0} %",
                            thousands(f.deliveries_per_s),
                            ms(f.hist.percentile(50.0)),
                            ms(f.hist.percentile(99.0)),
                            f.cpu_per_delivery_us,
                            f.other_pct()
                        )
                    });
                let _ = write!(s, " {} |", cell.unwrap_or_else(|| "—".into()));
            }
            s.push('\n');
        }
    }
    s
}

/// `--attacker compare`: for every server × transport × mode, fanout run and round, the pass
/// without the attacker beside the pass with it, and the acceptance checks; true when every
/// check passed and every attacked run has its pair.
pub fn attack_comparisons(results: &[TargetResult], a: &Args) -> (String, bool) {
    let (mut out, mut all) = (String::new(), true);
    for att in results.iter().filter(|r| r.pass == Pass::Pipeline) {
        let base = results.iter().find(|b| {
            b.pass == Pass::Baseline
                && (b.kind, b.mode, b.transport) == (att.kind, att.mode, att.transport)
        });
        let name = label(att.kind, att.mode, att.transport, a);
        for f in &att.fanout {
            let bf = base.and_then(|b| {
                b.fanout
                    .iter()
                    .find(|x| (x.subs, x.rate, x.round) == (f.subs, f.rate, f.round))
            });
            let title = format!(
                "{name} fanout {}×{}/s (round {}): without vs with the pipelining attacker",
                f.subs, f.rate, f.round
            );
            match (bf.and_then(side), side(f)) {
                (Some(b), Some(w)) => {
                    let (t, ok) = compare_table(&title, &b, &w);
                    out.push_str(&t);
                    all &= ok;
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "\n{title}: no run without the attacker to compare with — FAIL"
                    );
                    all = false;
                }
            }
        }
        if att.fanout.is_empty() {
            let _ = writeln!(out, "\n{name}: the attacked run produced no figures — FAIL");
            all = false;
        }
    }
    (out, all)
}

/// One pass of a fanout run, for the comparison (None without attack figures).
fn side(f: &FanoutResult) -> Option<Side<'_>> {
    f.attack.as_ref().map(|figs| Side {
        p50_us: f.hist.percentile(50.0),
        p99_us: f.hist.percentile(99.0),
        p99_all_us: pct_counting_lost(99.0, f.received, f.expected).map(|q| f.hist.percentile(q)),
        received: f.received,
        expected: f.expected,
        figs,
    })
}
