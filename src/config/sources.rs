//! Where configuration comes from besides the file: the command line
//! ([`Cli`]), `REDIX_*` environment variables, and `--set` paths, each
//! merged into the TOML table before the one typed deserialisation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use clap::Parser;

use super::{Config, ConfigError, Table};

#[derive(Debug, Parser)]
#[command(
    name = "redix",
    version,
    about = "Real-time SSE/WebSocket fan-out gateway"
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(short, long, env = "REDIX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address (`listen`), e.g. 0.0.0.0:4000; port 0 picks a free port.
    #[arg(long)]
    pub listen: Option<String>,
    /// Reactor threads (`workers`); 0 = one per core.
    #[arg(long)]
    pub workers: Option<usize>,
    /// API key with every scope (`auth.keys`); repeatable.
    #[arg(long = "api-key")]
    pub api_keys: Vec<String>,
    /// Concurrent SSE streams per client IP (`limits.sse_per_ip`).
    #[arg(long)]
    pub sse_per_ip: Option<u32>,
    /// Redis mode (`redis.url`), e.g. redis://127.0.0.1:6379.
    #[arg(long, global = true)]
    pub redis: Option<String>,
    /// Any key: `--set section.key=value` (value in TOML syntax; bare strings allowed).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[command(subcommand)]
    pub command: Option<Subcommand>,
}

/// What to run instead of the server.
#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// Publish one event through Redis (needs `--redis` or `redis.url`),
    /// exactly as a node does; prints the answer as JSON.
    Publish {
        /// Channel name.
        channel: String,
        /// Event data: JSON (anything else is sent as a JSON string).
        data: String,
        /// Publisher id: a second publish with it inside the dedupe window
        /// is not delivered again.
        #[arg(long)]
        id: Option<String>,
    },
    /// Run a local Finnhub-protocol simulator (the market upstream for
    /// tests and benchmarks) until SIGTERM or SIGINT; prints
    /// `finnhub-sim listening on IP:PORT` when ready.
    FinnhubSim(FinnhubSimArgs),
    /// Check this machine's limits (open files, listen backlog, ports,
    /// socket memory, connection tracking) against the configured load;
    /// says what to change where; exits 1 when something caps it.
    Doctor {
        /// Connections one process should hold (default:
        /// `limits.max_connections`, else 100000).
        #[arg(long)]
        connections: Option<usize>,
    },
}

/// `redix finnhub-sim`: see `redix::market::sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct FinnhubSimArgs {
    /// Listen address; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// The one accepted API token; without it any token is accepted.
    #[arg(long)]
    pub token: Option<String>,
    /// Symbols per connection before "Subscribing to too many symbols".
    #[arg(long, default_value_t = crate::market::sim::DEFAULT_MAX_SYMBOLS)]
    pub max_symbols: usize,
    /// Trades per second per subscribed symbol; 0 sends none.
    #[arg(long, default_value_t = crate::market::sim::DEFAULT_TRADES_PER_SEC)]
    pub rate: u32,
    /// Ping interval in ms; 0 sends none.
    #[arg(long, default_value_t = crate::market::sim::DEFAULT_PING_MS)]
    pub ping_ms: u64,
    /// No duplicate trades or re-sent frames (Finnhub sends both; turn
    /// them off to measure latency without their tail).
    #[arg(long)]
    pub no_duplicates: bool,
    /// Symbols that never trade (comma-separated), besides `SILENT*`.
    #[arg(long, value_delimiter = ',')]
    pub silent: Vec<String>,
}

impl FinnhubSimArgs {
    pub fn sim_config(&self) -> crate::market::sim::SimConfig {
        crate::market::sim::SimConfig {
            listen: self.listen,
            token: self.token.clone(),
            max_symbols: self.max_symbols,
            trades_per_sec: self.rate,
            ping_ms: self.ping_ms,
            silent_symbols: self.silent.clone(),
            duplicates: !self.no_duplicates,
        }
    }
}

/// Parses a value the way TOML would; a bare word that is not TOML is a string.
fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Sets `section.key` (or a top-level `key`) in the table.
fn set_path(table: &mut Table, path: &str, value: toml::Value) -> Result<(), ConfigError> {
    let mut parts = path.split('.');
    let (first, rest) = (parts.next().unwrap_or(""), parts.next());
    if first.is_empty() || parts.next().is_some() {
        return Err(ConfigError(format!(
            "config key `{path}`: expected `key` or `section.key`"
        )));
    }
    match rest {
        None => {
            table.insert(first.to_string(), value);
        }
        Some(key) => {
            let section = table
                .entry(first.to_string())
                .or_insert_with(|| toml::Value::Table(Table::new()));
            match section {
                toml::Value::Table(t) => {
                    t.insert(key.to_string(), value);
                }
                _ => {
                    return Err(ConfigError(format!(
                        "config key `{first}` is not a section"
                    )))
                }
            }
        }
    }
    Ok(())
}

const SECTIONS: [&str; 14] = [
    "auth", "limits", "sse", "ws", "queue", "history", "publish", "batch", "tcp", "shutdown",
    "debug", "redis", "market", "jobs",
];

pub(super) fn apply_env(
    table: &mut Table,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let known = known_keys();
    for (name, raw) in env {
        let key = name["REDIX_".len()..].to_ascii_lowercase();
        match key.as_str() {
            "config" | "log" => continue,
            "api_key" if raw.trim().is_empty() => {
                return Err(ConfigError(format!(
                    "{name} is set but empty: give comma-separated API keys or unset it"
                )));
            }
            "api_key" => {
                push_keys(table, raw.split(',').map(|k| k.trim().to_string()))?;
                continue;
            }
            _ => {}
        }
        let path = match key.split_once('_') {
            Some((section, rest)) if SECTIONS.contains(&section) => format!("{section}.{rest}"),
            _ => key.clone(),
        };
        if !known.contains(&path) {
            // Deployment scripts set their own REDIX_* variables; the file
            // and the command line stay strict.
            log::warn!("environment variable {name} is not a redix setting ({path}); ignored");
            continue;
        }
        set_path(table, &path, parse_value(raw))
            .map_err(|e| ConfigError(format!("{e} (from environment {name})")))?;
    }
    Ok(())
}

/// Every configuration key, as `key` or `section.key`.
fn known_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let Ok(toml::Value::Table(table)) = toml::Value::try_from(Config::default()) else {
        return keys;
    };
    for (name, value) in table {
        match value {
            toml::Value::Table(section) => {
                keys.extend(section.keys().map(|k| format!("{name}.{k}")));
            }
            _ => {
                keys.insert(name);
            }
        }
    }
    keys
}

pub(super) fn apply_cli(table: &mut Table, cli: &Cli) -> Result<(), ConfigError> {
    if let Some(listen) = &cli.listen {
        set_path(table, "listen", toml::Value::String(listen.clone()))?;
    }
    if let Some(workers) = cli.workers {
        set_path(table, "workers", toml::Value::Integer(workers as i64))?;
    }
    if let Some(url) = &cli.redis {
        set_path(table, "redis.url", toml::Value::String(url.clone()))?;
    }
    if let Some(n) = cli.sse_per_ip {
        set_path(
            table,
            "limits.sse_per_ip",
            toml::Value::Integer(i64::from(n)),
        )?;
    }
    push_keys(table, cli.api_keys.iter().cloned())?;
    for item in &cli.set {
        let (path, raw) = item
            .split_once('=')
            .ok_or_else(|| ConfigError(format!("--set {item}: expected KEY=VALUE")))?;
        set_path(table, path.trim(), parse_value(raw.trim()))?;
    }
    Ok(())
}

fn push_keys(table: &mut Table, keys: impl Iterator<Item = String>) -> Result<(), ConfigError> {
    let mut keys = keys.peekable();
    if keys.peek().is_none() {
        return Ok(());
    }
    let mut all: Vec<toml::Value> = match table.get("auth").and_then(|a| a.get("keys")) {
        Some(toml::Value::Array(existing)) => existing.clone(),
        _ => Vec::new(),
    };
    all.extend(keys.map(toml::Value::String));
    set_path(table, "auth.keys", toml::Value::Array(all))
}
