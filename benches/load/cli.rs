//! The command line: what to measure (`--target`, `--transport`, `--mode`, `--scenario`),
//! how hard (`--conns`, `--subs`, `--rates`/`--plan`, …) and within which limits.

use std::net::SocketAddrV4;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::plan::{parse_sub_rate, SubRate};
use crate::support::spawn::default_redix_bin;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetSel {
    Redix,
    Nchan,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransportSel {
    Sse,
    Ws,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
}

impl Transport {
    /// for JSON and table labels
    pub fn tag(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
        }
    }
    /// for the text output
    pub fn long(self) -> &'static str {
        match self {
            Transport::Sse => "SSE",
            Transport::Ws => "WebSocket",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScenarioSel {
    Idle,
    Fanout,
    /// idle, then fanout
    All,
    /// trades from a `redix finnhub-sim` process through redix to --subs subscribers spread
    /// over --market-symbols symbols (redix only; not part of `all`)
    Market,
    /// job submissions with no worker: --jobs-clients concurrent `POST /api/summarize`
    /// (latency to the 202), then the fanout runs without and with that many requests parked
    /// (redix embedded only; not part of `all`)
    Jobs,
}

/// redix's mode (nchan is always one server)
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeSel {
    /// one redix process, in-memory hub
    Embedded,
    /// a redis-server and --redis-nodes redix nodes using it (`--redis`)
    Redis,
    /// embedded first, then Redis mode, same scenarios
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Embedded,
    Redis,
}

impl Mode {
    pub fn tag(self) -> &'static str {
        match self {
            Mode::Embedded => "embedded",
            Mode::Redis => "redis",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NchanStart {
    /// use nchan if something already listens on --nchan-addr, else start it
    Auto,
    /// always start our own nginx (fails if --nchan-addr is taken)
    Always,
    /// never start it; it must already be running
    Never,
}

/// `--attacker`: the pipelining attacker of the hardening acceptance (see `attack`)
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AttackerSel {
    /// no attacker (the fanout figures as always)
    None,
    /// pipelined GETs, never read, while the publisher runs
    Pipeline,
    /// every run twice: first without (RSS and /readyz still sampled), then with, and a
    /// comparison table with the acceptance checks
    Compare,
}

/// One pass of the runs, i.e. what runs beside a fanout: nothing, the attacker's sampled
/// baseline (RSS and `/readyz`, no attacker), the attacker, or parked summarize requests
/// (`--scenario jobs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Off,
    Baseline,
    Pipeline,
    Parked,
}

impl Pass {
    /// appended to the server's label
    pub fn tag(self) -> &'static str {
        match self {
            Pass::Off => "",
            Pass::Baseline => " (no attacker)",
            Pass::Pipeline => " + attacker",
            Pass::Parked => " + parked jobs",
        }
    }
}

/// The passes `--attacker` asks for, in order.
pub fn attack_passes(a: &Args) -> Vec<Pass> {
    match a.attacker {
        AttackerSel::None => vec![Pass::Off],
        AttackerSel::Pipeline => vec![Pass::Pipeline],
        AttackerSel::Compare => vec![Pass::Baseline, Pass::Pipeline],
    }
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "load",
    about = "redix / nchan SSE and WebSocket load benchmark (loopback only)"
)]
pub struct Args {
    /// which server(s) to measure; `both` runs the same scenarios against each in turn
    #[arg(long, value_enum, default_value = "both")]
    pub target: TargetSel,
    /// SSE, WebSocket (redix `/ws`, nchan `/sub/CH` upgraded), or both; every server × transport
    /// is a freshly started server
    #[arg(long, value_enum, default_value = "both")]
    pub transport: TransportSel,
    #[arg(long, value_enum, default_value = "all")]
    pub scenario: ScenarioSel,
    /// redix binary to start; default: the one cargo built alongside this bench
    /// (CARGO_BIN_EXE_redix), else target/release/redix (cargo bench runs in the crate root)
    #[arg(long, env = "REDIX_BIN", default_value_os_t = default_redix_bin())]
    pub redix_bin: PathBuf,
    /// value of redix --workers
    #[arg(long, default_value_t = 2)]
    pub redix_workers: usize,
    /// extra argument passed to redix (repeatable; to every node in Redis mode)
    #[arg(long = "redix-arg", allow_hyphen_values = true)]
    pub redix_args: Vec<String>,
    /// redix in embedded mode (one process), in Redis mode (own redis-server + --redis-nodes
    /// nodes, subscribers split evenly, publishes to the first node), or both in turn
    #[arg(long, value_enum, default_value = "embedded")]
    pub mode: ModeSel,
    /// Redis mode: number of redix nodes sharing the redis-server
    #[arg(long, default_value_t = 2)]
    pub redis_nodes: usize,
    /// Redis mode: value of --workers for each node
    #[arg(long, default_value_t = 1)]
    pub redis_node_workers: usize,
    /// Redis mode: the redis-server binary (Debian package redis-server)
    #[arg(long, default_value = "redis-server")]
    pub redis_server_bin: PathBuf,
    /// where nchan listens (the peers' nchan.conf says 127.0.0.1:8801)
    #[arg(long, default_value = "127.0.0.1:8801")]
    pub nchan_addr: SocketAddrV4,
    #[arg(long, value_enum, default_value = "auto")]
    pub nchan_start: NchanStart,
    /// nchan.conf template (@WORKERS@ / @NOFILE@); default ../shared/peers/nchan.conf or /work/shared/peers/nchan.conf
    #[arg(long)]
    pub nchan_conf: Option<PathBuf>,
    #[arg(long, default_value = "nginx")]
    pub nginx_bin: PathBuf,
    /// idle: number of connections
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// fanout: number of subscribers
    #[arg(long, default_value_t = 1_000)]
    pub subs: usize,
    /// fanout: publish rates (events/s), one run each
    #[arg(long, value_delimiter = ',', default_value = "20,1000")]
    pub rates: Vec<f64>,
    /// fanout: runs as SUBSxRATE pairs, e.g. 1000x20,1000x1000,10000x20,10000x100; replaces
    /// --subs × --rates
    #[arg(long, value_delimiter = ',', value_parser = parse_sub_rate)]
    pub plan: Vec<SubRate>,
    /// fanout: most keep-alive connections the publisher keeps requests in flight on
    #[arg(long, default_value_t = 16)]
    pub pub_conns: usize,
    /// market: trades per second per symbol the simulator makes (`finnhub-sim --rate`)
    #[arg(long, default_value_t = 200)]
    pub market_rate: u32,
    /// market: symbols the subscribers are spread over evenly (`trades:SYM000`, …)
    #[arg(long, default_value_t = 50)]
    pub market_symbols: usize,
    /// market: the API token the simulator accepts and redix sends (`market.token`)
    #[arg(long, default_value = "bench-token")]
    pub market_token: String,
    /// fanout: seconds of publishing per rate; market: seconds measured
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// size of the published JSON object {"t":…,"pad":"…"} in bytes
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// generator event-loop threads (the publisher has its own)
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// client connections per source address (127.0.0.2, 127.0.0.3, …)
    #[arg(long, default_value_t = 2_000)]
    pub per_source: usize,
    /// connections being set up at once (all threads together)
    #[arg(long, default_value_t = 512)]
    pub connect_concurrency: usize,
    /// attempts per connection before it counts as failed
    #[arg(long, default_value_t = 3)]
    pub connect_attempts: u32,
    /// seconds an attempt may take from connect() to a ready stream
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// idle: seconds to wait for the server RSS to stop changing
    #[arg(long, default_value_t = 30.0)]
    pub settle_timeout: f64,
    /// fanout: seconds to wait after the last publish for deliveries to arrive
    #[arg(long, default_value_t = 30.0)]
    pub drain_timeout: f64,
    /// hard deadline per scenario (seconds)
    #[arg(long, default_value_t = 240.0)]
    pub deadline: f64,
    /// also append the JSON result lines to this file
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// run the whole scenario list this many times against the same server (shows RSS growth)
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// fanout: a pipelining attacker while publishing (BENCHMARKS.md "Pipelining attacker");
    /// `compare` runs without, then with it, and checks the hardening's acceptance figures
    #[arg(long, value_enum, default_value = "none")]
    pub attacker: AttackerSel,
    /// attacker connections (one thread each, from 127.0.0.250)
    #[arg(long, default_value_t = 1)]
    pub attacker_conns: usize,
    /// what the attacker requests, pipelined
    #[arg(long, default_value = "/metrics/prom")]
    pub attacker_path: String,
    /// the attack stops (and the run fails) when the server's VmRSS passes this many MiB
    #[arg(long, default_value_t = 1024)]
    pub attacker_rss_cap_mib: u64,
    /// fanout: after each rate, run the machine's write floor (`--floor-src`, built with gcc)
    /// with as many sockets, paced at the same rate and back to back, and give CPU per
    /// delivery as a ratio to it (see BENCHMARKS.md, "The write floor")
    #[arg(long)]
    pub floor: bool,
    /// the floor's C source
    #[arg(long, default_value = "../shared/tools/floor/floor.c")]
    pub floor_src: std::path::PathBuf,
    /// bytes of one floor write (redix's SSE event of a 100-byte payload is about this size)
    #[arg(long, default_value_t = 180)]
    pub floor_size: usize,
    /// jobs: concurrent summarize requests (one source address each): the submit burst, and
    /// the requests held parked beside the fanout
    #[arg(long, default_value_t = 200)]
    pub jobs_clients: usize,
    /// jobs: burst rounds with `?wait=0` (202 at once), distinct URLs each round
    #[arg(long, default_value_t = 10)]
    pub jobs_rounds: usize,
    /// jobs: burst rounds without `?wait=` (202 after the quick-check window, `jobs.wait_ms`)
    #[arg(long, default_value_t = 1)]
    pub jobs_window_rounds: usize,
    /// jobs: the `?wait=` seconds (1–10) of the requests parked beside the fanout; each is
    /// re-posted (a new URL) as its 202 comes back
    #[arg(long, default_value_t = 10)]
    pub jobs_park_wait: u32,
    /// passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// The fanout runs: --plan, else every --rates at --subs.
pub fn fanout_plan(a: &Args) -> Vec<SubRate> {
    if !a.plan.is_empty() {
        return a.plan.clone();
    }
    a.rates
        .iter()
        .map(|&rate| SubRate { subs: a.subs, rate })
        .collect()
}
