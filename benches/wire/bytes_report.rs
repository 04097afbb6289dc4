//! Scenario 1's report: per variant bytes/event, reads and whether every event arrived; what
//! a compressor keeping its context per connection would send (computed here, for
//! reference); redix's own write counters over the phase. Text and JSON lines.

use flate2::{Compress, Compression, FlushCompress};
use serde_json::{json, Value};

use crate::bytes::{check_ids, BytesRun};
use crate::client::delta;
use crate::support::report::{header, round};
use crate::Args;

/// Prints the phase; false if a client missed an event or reported an error.
pub fn report_bytes(run: &BytesRun, a: &Args, json_lines: &mut Vec<Value>) -> bool {
    let n = run.published.len();
    println!(
        "\n== bytes on the wire: {} ({} trades on {} at {}/s over {:.2} s, data JSON {:.1} B/event) ==",
        run.label,
        n,
        a.channel,
        a.rate,
        run.secs,
        run.data_bytes as f64 / n.max(1) as f64
    );
    println!(
        "{}",
        header(&[
            ("variant", -18),
            ("events", 6),
            ("B/event", 9),
            ("vs sse", 8),
            ("reads", 7),
            ("ev/rd", 6),
            ("frames", 8),
            ("compressed", 10),
            (" all events?", 0)
        ])
    );
    let plain = run
        .clients
        .iter()
        .find(|c| c.v.name == "sse")
        .map(|c| c.bytes as f64 / c.dec.ids.len().max(1) as f64);
    let ok = variant_rows(run, a, plain, json_lines);
    references(run, plain, json_lines);
    deflate_notes(run);
    server_counters(run, json_lines);
    ok
}

/// One row (and JSON line) per variant; false if one missed an event or saw an error.
fn variant_rows(run: &BytesRun, a: &Args, plain: Option<f64>, json_lines: &mut Vec<Value>) -> bool {
    let n = run.published.len();
    let mut ok = true;
    for c in &run.clients {
        let events = c.dec.ids.len();
        let per = c.bytes as f64 / events.max(1) as f64;
        let check = check_ids(c, &run.published);
        let mut note = check.clone();
        if !c.dec.errors.is_empty() {
            note.push_str(&format!("; errors: {}", c.dec.errors.join(" | ")));
        }
        if check != "ok" || !c.dec.errors.is_empty() {
            ok = false;
        }
        let frames = if c.v.ws {
            c.dec.messages.to_string()
        } else {
            "-".into()
        };
        let compressed = if c.v.ws {
            format!("{}/{}", c.dec.compressed, c.dec.messages)
        } else if c.v.compress {
            "gzip".into()
        } else {
            "-".into()
        };
        println!(
            "{:<18} {:>6} {:>9.1} {:>7.0}% {:>7} {:>6.2} {:>8} {:>10}  {}",
            c.v.name,
            events,
            per,
            plain.map(|p| per / p * 100.0).unwrap_or(0.0),
            c.reads,
            events as f64 / c.reads.max(1) as f64,
            frames,
            compressed,
            note
        );
        json_lines.push(json!({
            "bench": "wire", "scenario": "bytes", "config": run.label, "variant": c.v.name,
            "events_published": n, "events_received": events, "all_events": check == "ok",
            "bytes_after_head": c.bytes, "bytes_before_ready": c.pre_bytes,
            "bytes_per_event": round(per, 1),
            "bytes_per_event_after_ready": round((c.bytes - c.pre_bytes) as f64 / events.max(1) as f64, 1),
            "reads": c.reads, "events_per_read": round(events as f64 / c.reads.max(1) as f64, 2),
            "ws_messages": c.dec.messages, "ws_compressed": c.dec.compressed, "ws_batches": c.dec.batches,
            "extensions": c.extensions, "errors": c.dec.errors,
            "rate": a.rate, "window_ms": a.window_ms,
            "data_json_bytes_per_event": round(run.data_bytes as f64 / n.max(1) as f64, 1),
        }));
    }
    ok
}

/// What a per-connection compressor keeping its context would send (computed here).
fn references(run: &BytesRun, plain: Option<f64>, json_lines: &mut Vec<Value>) {
    let mut refs = Vec::new();
    if let Some(c) = run.clients.iter().find(|c| c.v.name == "sse") {
        let sizes = context_deflate_sizes(&c.dec.texts);
        let total: usize = sizes.iter().sum::<usize>() + 10;
        refs.push(("sse, gzip keeping context (computed)", total, sizes.len()));
    }
    if let Some(c) = run.clients.iter().find(|c| c.v.name == "ws") {
        let sizes = context_deflate_sizes(&c.dec.texts);
        let total: usize = sizes.iter().map(|s| s - 4 + ws_header_len(s - 4)).sum();
        refs.push(("ws, deflate keeping context (computed)", total, sizes.len()));
    }
    for (name, total, events) in refs {
        let per = total as f64 / events.max(1) as f64;
        println!(
            "{:<18} {:>6} {:>9.1} {:>7.0}%   (not sent by redix: {name})",
            "  reference",
            events,
            per,
            plain.map(|p| per / p * 100.0).unwrap_or(0.0)
        );
        json_lines.push(json!({
            "bench": "wire", "scenario": "bytes", "config": run.label, "variant": "reference",
            "what": name, "events": events, "bytes_per_event": round(per, 1),
        }));
    }
}

/// The first inflated WebSocket frame and the extensions agreed.
fn deflate_notes(run: &BytesRun) {
    if let Some(c) = run
        .clients
        .iter()
        .find(|c| c.v.compress && c.v.ws && c.dec.first_inflated.is_some())
    {
        let s = c.dec.first_inflated.as_deref().unwrap_or("");
        println!(
            "first inflated frame ({}): {}",
            c.v.name,
            &s[..s.len().min(160)]
        );
    }
    for c in run.clients.iter().filter(|c| c.v.ws && c.v.compress) {
        println!("{}: Sec-WebSocket-Extensions: {}", c.v.name, c.extensions);
    }
}

/// redix's counters over the phase (all clients together).
fn server_counters(run: &BytesRun, json_lines: &mut Vec<Value>) {
    let d = |k: &str| delta(&run.m0, &run.m1, k);
    let (calls, written) = (
        d("redix_write_calls_total"),
        d("redix_events_written_total"),
    );
    println!(
        "redix over the phase: redix_write_calls_total +{}, redix_events_written_total +{} ({:.2} events/call), \
         redix_bytes_written_total +{}, redix_ws_compressions_total +{}, redix_sse_gzip_compressions_total +{}, \
         redix_http_requests_total +{}",
        calls,
        written,
        written / calls.max(1.0),
        d("redix_bytes_written_total"),
        d("redix_ws_compressions_total"),
        d("redix_sse_gzip_compressions_total"),
        d("redix_http_requests_total"),
    );
    json_lines.push(json!({
        "bench": "wire", "scenario": "bytes", "config": run.label, "variant": "all (server counters)",
        "write_calls": calls, "events_written": written, "bytes_written": d("redix_bytes_written_total"),
        "ws_compressions": d("redix_ws_compressions_total"),
        "sse_gzip_compressions": d("redix_sse_gzip_compressions_total"),
        "http_requests": d("redix_http_requests_total"),
    }));
}

/// Deflates `texts` one after another with one context, each ended by a sync flush:
/// what a compressor that keeps its context per connection would send.
fn context_deflate_sizes(texts: &[Vec<u8>]) -> Vec<usize> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(1 << 16);
    texts
        .iter()
        .map(|t| {
            out.clear();
            out.reserve(t.len() * 2 + 64);
            let before = c.total_out();
            let _ = c.compress_vec(t, &mut out, FlushCompress::Sync);
            (c.total_out() - before) as usize
        })
        .collect()
}

fn ws_header_len(payload: usize) -> usize {
    match payload {
        n if n < 126 => 2,
        n if n < 65536 => 4,
        _ => 10,
    }
}
