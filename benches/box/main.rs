//! The box bench: how many connections one machine holds, and what they cost. See
//! BENCHMARKS.md, "Connections per box", and README "Deployment".
//!
//! `cargo bench --bench box -- [--conns 19800] [--nodes 1] [--workers 2] [--rates 1,10]
//!  [--duration 10] [--stall-pct 1] [--transport sse|ws] [--set key=value]…`
//!
//! * Servers: `--nodes` redix processes on one port (`SO_REUSEPORT`), with more than one (or
//!   `--redis`) in Redis mode through a redis-server the bench starts (`nodes`).
//! * Generator: this binary again, `--gen`, in ceil(conns / `--per-gen`) processes (the
//!   open-file limit, 20,000 here, is per process), each one mio loop; clients from
//!   127.0.0.2, 127.0.0.3, … (`--per-source` each) so ephemeral ports never run out (`fleet`,
//!   `gen`, `client`).
//! * Idle: connect rate (first connect → last client ready, all processes), connect→ready
//!   p50/p99; then, once RSS is stable, user space = Σ VmRSS of the redix nodes (after −
//!   before) / connections, and the kernel's share separately: `/proc/net/sockstat` TCP
//!   `mem` pages (socket buffers) and `/proc/meminfo` Slab (the socket structures of both
//!   ends, since the clients are on this box too) (`sys`).
//! * Fan-out (`--rates`): every client on one channel, events published to one node
//!   (`publish`) carrying a sequence number and a timestamp; per pass deliveries, loss,
//!   gaps, duplicates and clients that got every event, deliveries/s, publish→receive
//!   p50/p99/max (`hist`).
//! * `--churn-pct P`: P % more clients, each closed (half RST, half FIN) and reopened every
//!   second through every pass; the nodes' RSS and fds are sampled every 10 s (a soak).
//! * `--stall-pct P`: every rate runs twice, first as is, then with P % more clients that
//!   send their request and never read (a small receive buffer); the readers' figures are
//!   compared and the nodes' RSS peak is checked against the queue caps (`run`).
//!
//! Load only to 127.0.0.0/8; every process started gets `PR_SET_PDEATHSIG`.

mod client;
mod fleet;
mod gen;
mod hist;
mod nodes;
mod publish;
mod run;
#[path = "../support/mod.rs"]
mod support;
mod sys;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "box",
    about = "connections per box: idle cost, fan-out, stalled readers"
)]
pub struct Args {
    /// subscribers (idle, then the fan-out passes)
    #[arg(long, default_value_t = 19_800)]
    pub conns: usize,
    /// redix processes sharing the port
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// reactors per node (`--workers`)
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Redis mode even with one node (always with more)
    #[arg(long)]
    pub redis: bool,
    /// connections per generator process (each under the 20,000 open-file limit)
    #[arg(long, default_value_t = 18_000)]
    pub per_gen: usize,
    /// connections per source address (ephemeral ports: 28,232 per address here)
    #[arg(long, default_value_t = 10_000)]
    pub per_source: usize,
    /// connections in setup at once, per generator process
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// sse or ws
    #[arg(long, default_value = "sse")]
    pub transport: String,
    /// events/s of each fan-out pass (empty: idle only)
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// seconds each pass publishes
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// bytes per event's data (about)
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// stalled clients, % of `--conns`, added for a second run of every pass
    #[arg(long, default_value_t = 0.0)]
    pub stall_pct: f64,
    /// SO_RCVBUF of a stalled client
    #[arg(long, default_value_t = 4096)]
    pub stall_rcvbuf: usize,
    /// churning clients, % of `--conns`, added before the passes: each is closed (half with
    /// RST, half with FIN) and reopened every second; the nodes' RSS and fds are sampled every
    /// 10 s of each pass (a soak: `--duration 600`)
    #[arg(long, default_value_t = 0.0)]
    pub churn_pct: f64,
    /// `--set key=value` for every node (repeatable)
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// the redix binary
    #[arg(long, env = "REDIX_BIN", default_value_os_t = support::spawn::default_redix_bin())]
    pub bin: PathBuf,
    /// seconds to wait for every client to be ready
    #[arg(long, default_value_t = 30)]
    pub connect_timeout: u64,

    // ---- a generator process (started by the bench) ----
    #[arg(long, hide = true)]
    pub gen: bool,
    #[arg(long, hide = true)]
    pub target: Option<SocketAddr>,
    #[arg(long, hide = true, default_value_t = 0)]
    pub first: usize,
    #[arg(long, hide = true, default_value = "box")]
    pub channel: String,
    /// passed by `cargo bench`
    #[arg(long, hide = true)]
    pub bench: bool,
}

fn main() {
    let a = Args::parse();
    raise_nofile();
    let r = match a.gen {
        true => gen::run(gen::GenArgs {
            target: a.target.unwrap_or(([127, 0, 0, 1], 4000).into()),
            conns: a.conns,
            first: a.first,
            per_source: a.per_source,
            channel: a.channel.clone(),
            ws: a.transport == "ws",
            concurrency: a.concurrency,
            connect_timeout: Duration::from_secs(a.connect_timeout),
        }),
        false => {
            support::spawn::install_signal_handlers();
            run::run(&a)
        }
    };
    if let Err(e) = r {
        eprintln!("box bench{}: {e}", if a.gen { " (generator)" } else { "" });
        std::process::exit(1);
    }
}

/// Raises the soft open-file limit to the hard one.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
