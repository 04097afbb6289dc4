//! Unit tests of configuration loading and validation.

use super::*;
use clap::Parser;

fn cli(args: &[&str]) -> Cli {
    let mut argv = vec!["redix"];
    argv.extend_from_slice(args);
    Cli::parse_from(argv)
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_example_file_is_complete_and_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/redix.toml");
    let c = Config::from_sources(&cli(&["--config", path]), &env(&[])).unwrap();
    assert!(!c.redis.enabled());
    let c = Config::from_sources(
        &cli(&["--config", path, "--redis", "redis://10.0.0.5:6380"]),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(c.redis.url, "redis://10.0.0.5:6380");
    let bad = Config::from_sources(&cli(&["--redis", "http://x"]), &env(&[]));
    assert!(bad.unwrap_err().0.contains("redis.url"));
}

#[test]
fn defaults_hold_without_sources() {
    let c = Config::from_sources(&cli(&[]), &env(&[])).unwrap();
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.limits.sse_per_ip, DEFAULT_SSE_PER_IP);
    assert_eq!(c.queue.max_events, DEFAULT_QUEUE_MAX_EVENTS);
}

#[test]
fn cli_beats_env_beats_file() {
    let dir = std::env::temp_dir().join(format!("redix-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a.toml");
    std::fs::write(
        &path,
        "workers = 3\n[limits]\nsse_per_ip = 7\nmax_body_bytes = 99\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let e = env(&[("REDIX_LIMITS_SSE_PER_IP", "8"), ("REDIX_WORKERS", "4")]);
    let c = Config::from_sources(&cli(&["-c", p, "--workers", "5"]), &e).unwrap();
    assert_eq!(c.workers, 5, "cli over env");
    assert_eq!(c.limits.sse_per_ip, 8, "env over file");
    assert_eq!(c.limits.max_body_bytes, 99, "file over default");
}

#[test]
fn bad_values_name_the_key() {
    let e = env(&[("REDIX_LIMITS_SSE_PER_IP", "lots")]);
    let err = Config::from_sources(&cli(&[]), &e).unwrap_err().0;
    assert!(err.contains("sse_per_ip"), "{err}");
    let err = Config::from_sources(&cli(&["--set", "queue.max_event=3"]), &env(&[]))
        .unwrap_err()
        .0;
    assert!(err.contains("max_event"), "{err}");
    let err = Config::from_sources(&cli(&["--set", "queue.max_events=0"]), &env(&[]))
        .unwrap_err()
        .0;
    assert!(err.contains("queue.max_events"), "{err}");
    let err = Config::from_sources(&cli(&["--listen", "nowhere"]), &env(&[]))
        .unwrap_err()
        .0;
    assert!(err.contains("listen"), "{err}");
}

#[test]
fn api_keys_merge_from_env_and_cli() {
    let e = env(&[("REDIX_API_KEY", "a,b")]);
    let c = Config::from_sources(&cli(&["--api-key", "c"]), &e).unwrap();
    assert_eq!(c.auth.keys, vec!["a", "b", "c"]);
    assert_eq!(c.keys_for(Scope::Publish).len(), 3);
}
