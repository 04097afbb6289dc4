//! The command line: which modes, how many nodes and publishers, for how long; and the
//! checks of it that must hold before anything starts (std, clap; the default redix binary
//! from `support::spawn`).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::support::spawn::default_redix_bin;

/// Errors are text for the user.
pub type Res<T> = Result<T, String>;

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

pub fn validate(a: &Args) -> Res<()> {
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
