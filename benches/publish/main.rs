//! Publish throughput through Redis: one redis-server against a Redis Cluster of 3 masters,
//! in one run, with the same publisher load. See BENCHMARKS.md, "Publish throughput: one
//! redis-server against a 3-shard Redis Cluster".
//!
//! `cargo bench --bench publish -- [--mode both|single|cluster] [--nodes 2] [--conns 8]
//!  [--depth 1] [--channels 64] [--duration 10] [--warmup 2] [--replicas 0] …`
//!
//! For each mode (`run`): its Redis (`redis`: one redis-server, or 3 masters with
//! `--replicas` replicas each joined by `redis-cli --cluster create`), `--nodes` redix nodes
//! on it (`nodes`; `--redis URL` or `redis.cluster = […]`), then `--conns` keep-alive
//! publishers per node, each keeping `--depth` `POST /api/publish` in flight on its own
//! channels (`load`), closed loop. Over the measured window: acknowledged publishes/s,
//! publish latency, CPU of every redis-server, of every node (and its reactor and Redis
//! command threads) and of the bench (`cpu`). After it, every channel's newest stream entry
//! in Redis is checked against the last publish acknowledged on it (`check`). Output: a
//! block per mode, a comparison with the ratio cluster / single, one JSON line per mode
//! (`report`).
//!
//! Exit status: 0 when every mode ran, every publish was answered 2xx and every stream
//! matched; 1 when a check failed; 2 when a mode could not run or the run was interrupted.
//! Load only to 127.0.0.1; every process started gets `PR_SET_PDEATHSIG`.

mod check;
mod cpu;
mod load;
mod nodes;
mod redis;
mod report;
mod run;
#[path = "../support/mod.rs"]
mod support;

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use support::spawn::{default_redix_bin, install_signal_handlers};

type Res<T> = Result<T, String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeSel {
    Single,
    Cluster,
    /// single, then cluster
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Single,
    Cluster,
}

impl Mode {
    pub fn tag(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Cluster => "cluster",
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "publish",
    about = "publishes/s through one redis-server and through a 3-master Redis Cluster"
)]
pub struct Args {
    #[arg(long, value_enum, default_value = "both")]
    pub mode: ModeSel,
    /// redix nodes per mode
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// reactors per node (`--workers`)
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// publisher connections per node (one thread each)
    #[arg(long, default_value_t = 8)]
    pub conns: usize,
    /// requests in flight per connection (pipelined)
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// channels published to (`pb-0` …); at least nodes × conns
    #[arg(long, default_value_t = 64)]
    pub channels: usize,
    /// seconds measured
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// seconds of publishing before the window opens
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// bytes of each event's data (about)
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// replicas per cluster master
    #[arg(long, default_value_t = 0)]
    pub replicas: usize,
    /// `history.max_events` of the nodes (history is always on in Redis mode)
    #[arg(long, default_value_t = 100)]
    pub history: u64,
    /// `redis.prefix` of the nodes (no `{` or `}`)
    #[arg(long, default_value = "redix:")]
    pub prefix: String,
    /// `--set key=value` for every node (repeatable)
    #[arg(long = "set")]
    pub sets: Vec<String>,
    #[arg(long, env = "REDIX_BIN", default_value_os_t = default_redix_bin())]
    pub redix_bin: PathBuf,
    /// passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    pub bench: bool,
}

fn validate(a: &Args) -> Res<()> {
    if a.nodes == 0 || a.conns == 0 || a.depth == 0 {
        return Err("--nodes, --conns and --depth must be at least 1".into());
    }
    if a.channels < a.nodes * a.conns {
        return Err(format!(
            "--channels {} is fewer than the {} connections (each owns its channels)",
            a.channels,
            a.nodes * a.conns
        ));
    }
    if a.duration <= 0.0 || a.duration + a.warmup > 60.0 {
        return Err("--duration must be above 0 and --warmup + --duration at most 60".into());
    }
    if a.prefix.contains(['{', '}']) {
        return Err("--prefix may not contain { or }".into());
    }
    Ok(())
}

fn main() {
    let a = Args::parse();
    install_signal_handlers();
    if let Err(e) = validate(&a) {
        eprintln!("publish bench: {e}");
        std::process::exit(2);
    }
    let modes: &[Mode] = match a.mode {
        ModeSel::Single => &[Mode::Single],
        ModeSel::Cluster => &[Mode::Cluster],
        ModeSel::Both => &[Mode::Single, Mode::Cluster],
    };
    report::preamble(&a);
    let mut results = Vec::new();
    let mut code = 0;
    for &m in modes {
        match run::run_mode(&a, m) {
            Ok(r) => {
                report::print_mode(&a, &r);
                if !report::passed(&r) {
                    code = code.max(1);
                }
                results.push(r);
            }
            Err(e) => {
                eprintln!("publish bench [{}]: {e}", m.tag());
                code = 2;
            }
        }
    }
    report::compare(&results);
    for r in &results {
        println!("{}", report::json(&a, r));
    }
    if code != 0 {
        eprintln!("publish bench: exit status {code} (see above)");
    }
    std::process::exit(code);
}
