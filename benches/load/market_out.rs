//! What the market scenario prints: its block of text and its JSON line.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::cli::Transport;
use crate::market::MarketResult;
use crate::support::report::{ms, round, thousands};

pub fn market_json(tr: Transport, r: &MarketResult) -> Value {
    let h = &r.hist;
    json!({
        "bench": "load", "target": "redix", "mode": "embedded", "transport": tr.tag(), "scenario": "market",
        "subs": r.subs, "subs_ready": r.ready, "symbols": r.symbols, "rate_per_symbol": r.rate,
        "window_s": round(r.window_s, 2),
        "delivered": r.delivered, "deliveries_per_s": r.per_s(r.delivered as f64).round(),
        "nominal_deliveries_per_s": r.nominal_per_s().round(),
        "upstream_trades": r.upstream, "upstream_trades_per_s": r.upstream.map(|u| r.per_s(u).round()),
        "conflated": r.conflated, "stale": r.stale,
        "dropped_streams": r.dropped, "slow_consumer_closes": r.slow_closed,
        "latency_resolution_us": 1000,
        "latency_us": {"p50": h.percentile(50.0), "p90": h.percentile(90.0), "p99": h.percentile(99.0),
                       "p999": h.percentile(99.9), "max": h.max, "mean": h.mean().round(), "n": h.n},
        "server_cpu_ms": round(r.cpu_ms, 1), "cpu_per_delivery_us": round(r.cpu_per_delivery_us(), 3),
        "rss_before_kib": r.rss_before, "rss_end_kib": r.rss_end,
        "sim_cpu_ms": round(r.sim_cpu_ms, 1), "sim_rss_kib": r.sim_rss,
        "loadgen_cpu_pct": r.loadgen_cpu_pct.round(), "box_busy_pct": r.box_busy_pct.round(),
        "first_error": r.first_err,
    })
}

pub fn print_market(name: &str, tr: Transport, r: &MarketResult) {
    let mut s = String::new();
    let h = &r.hist;
    let pct = |ms: f64| ms / r.window_s.max(1e-9) / 10.0;
    let _ = writeln!(
        s,
        "\n== {name} market: {} {}subscribers over {} symbols × {} trades/s per symbol, {:.1} s ==",
        r.subs,
        match tr {
            Transport::Sse => "SSE ",
            Transport::Ws => "WebSocket ",
        },
        r.symbols,
        r.rate,
        r.window_s
    );
    let _ = writeln!(s, "  subscribers ready   {} / {}", r.ready, r.subs);
    let opt = |v: Option<f64>| v.map_or("?".to_string(), |v| thousands(r.per_s(v)));
    let _ = writeln!(
        s,
        "  upstream            {} trades/s received by redix (asked of the simulator: {} × {} = {}); {} events/s conflated",
        opt(r.upstream),
        r.rate,
        r.symbols,
        thousands(r.rate as f64 * r.symbols as f64),
        opt(r.conflated),
    );
    let _ = writeln!(
        s,
        "  deliveries          {} trades delivered = {} trades/s (every trade to every subscriber of its symbol would be {}/s); stale {}, streams dropped {} ({} as slow consumers)",
        thousands(r.delivered as f64),
        thousands(r.per_s(r.delivered as f64)),
        thousands(r.nominal_per_s()),
        r.stale,
        r.dropped,
        r.slow_closed
    );
    let _ = writeln!(
        s,
        "  latency (ms)        p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}   (upstream \"t\" → client; \"t\" is in ms, so ±1 ms)",
        ms(h.percentile(50.0)),
        ms(h.percentile(90.0)),
        ms(h.percentile(99.0)),
        ms(h.percentile(99.9)),
        ms(h.max),
        ms(h.mean() as u64)
    );
    let _ = writeln!(
        s,
        "  server CPU          {:.0} ms over {:.1} s ({:.0} % of one core)  →  {:.3} µs per delivery",
        r.cpu_ms,
        r.window_s,
        pct(r.cpu_ms),
        r.cpu_per_delivery_us()
    );
    let _ = writeln!(
        s,
        "  server RSS          {:.1} MiB before the window, {:.1} MiB after",
        r.rss_before as f64 / 1024.0,
        r.rss_end as f64 / 1024.0
    );
    let _ = writeln!(
        s,
        "  simulator           {:.0} ms CPU ({:.0} % of one core), RSS {:.1} MiB",
        r.sim_cpu_ms,
        pct(r.sim_cpu_ms),
        r.sim_rss as f64 / 1024.0
    );
    let _ = writeln!(
        s,
        "  box                 {:.0} % of one core busy (of {} cores); generator {:.0} %",
        r.box_busy_pct,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        r.loadgen_cpu_pct
    );
    if let Some(e) = &r.first_err {
        let _ = writeln!(s, "  first error         {e}");
    }
    print!("{s}");
}
