//! Bytes on the wire per event, and the cost of resume; see BENCHMARKS.md.
//!
//! `cargo bench --bench wire -- [--scenario bytes|resume|all] ...`
//!
//! * bytes: a trade-like stream (`--rate` events/s for `--secs` s on `bench:AAPL`; not
//!   `trades:*`, the market feed's own namespace, which publishers are refused) read at
//!   the same time by one client of each variant: SSE plain / gzip / `&batch=1` / gzip+batch,
//!   WebSocket plain / permessage-deflate / `?batch=1` / deflate+batch. Every client decodes
//!   everything it gets (gzip and deflate included), checks it received exactly the
//!   published ids in order, and counts the bytes and `read(2)` calls after the response
//!   head. Run twice: with redix's default `ws.deflate_min_bytes` and with 0. Then, unless
//!   `--per-variant-secs 0`, each variant alone, for redix's own write counters per variant.
//! * resume: `--events` H events published (pipelined) to one channel nobody listens to,
//!   then `--clients` K SSE clients with `lastEventId=0` (and then K WebSocket clients with
//!   `"since":"0"`) connect at once; time until every client has all H events, server CPU
//!   (Δ utime+stime of /proc/PID/stat) and VmRSS around it, `redix_replayed_total`.
//!
//! The bench starts the release redix itself (`--listen 127.0.0.1:0 --workers 2`), stops it
//! with SIGTERM at the end, on error, on Ctrl-C and at the `--max-secs` deadline (and the
//! child gets PR_SET_PDEATHSIG). Output: tables, then one JSON line per result.
//!
//! Layout: `server` (the redix process, the deadline watchdog), `client` (HTTP requests,
//! the keep-alive publisher, opening streams), `trades` (payloads), `decode` (what the
//! clients read: SSE plain or gzip, WebSocket frames plain or deflated), then the scenarios
//! `bytes` (+ `bytes_report`) and `resume` (+ `replay`). `support` is shared with the load
//! bench.

mod bytes;
mod bytes_report;
mod client;
mod decode;
mod replay;
mod resume;
mod server;
#[path = "../support/mod.rs"]
mod support;
mod trades;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use support::spawn::{default_redix_bin, install_signal_handlers};

type Res<T> = Result<T, String>;

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScenarioSel {
    Bytes,
    Resume,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransportSel {
    Sse,
    Ws,
    Both,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "wire",
    about = "redix: bytes on the wire per event, and the cost of resume (loopback only)"
)]
pub struct Args {
    #[arg(long, value_enum, default_value = "all")]
    pub scenario: ScenarioSel,
    /// bytes: events published per second
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// bytes: seconds of publishing
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// bytes: channel of the trade stream
    #[arg(long, default_value = "bench:AAPL")]
    pub channel: String,
    /// bytes: `batch.window_ms` redix runs with
    #[arg(long, default_value_t = 50)]
    pub window_ms: u64,
    /// bytes: seconds of publishing for each variant alone (write counters); 0 skips it
    #[arg(long, default_value_t = 2.0)]
    pub per_variant_secs: f64,
    /// resume: events in history (H)
    #[arg(long, default_value_t = 50_000)]
    pub events: u64,
    /// resume: clients replaying at once (K)
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// resume: size of each event's `data` JSON
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// resume: which transports to measure
    #[arg(long, value_enum, default_value = "both")]
    pub transport: TransportSel,
    /// resume: longest a replay may take before the run fails
    #[arg(long, default_value_t = 120)]
    pub replay_timeout_secs: u64,
    /// the whole run is killed (redix first) after this many seconds
    #[arg(long, default_value_t = 540)]
    pub max_secs: u64,
    #[arg(long, default_value_os_t = default_redix_bin())]
    pub redix_bin: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    pub bench: bool,
}

fn run(a: &Args) -> Res<bool> {
    let mut json_lines = Vec::new();
    let mut ok = true;
    if matches!(a.scenario, ScenarioSel::Bytes | ScenarioSel::All) {
        ok &= bytes::run_bytes(a, &mut json_lines)?;
    }
    if matches!(a.scenario, ScenarioSel::Resume | ScenarioSel::All) {
        ok &= resume::run_resume(a, &mut json_lines)?;
    }
    println!();
    for v in &json_lines {
        println!("{v}");
    }
    Ok(ok)
}

fn main() {
    let args = Args::parse();
    install_signal_handlers();
    server::start_watchdog(Duration::from_secs(args.max_secs));
    let mut summary = String::new();
    let code = match run(&args) {
        Ok(true) => 0,
        Ok(false) => {
            let _ = write!(summary, "wire: some checks failed (see above)");
            1
        }
        Err(e) => {
            let _ = write!(summary, "wire: {e}");
            2
        }
    };
    if !summary.is_empty() {
        eprintln!("{summary}");
    }
    std::process::exit(code);
}
