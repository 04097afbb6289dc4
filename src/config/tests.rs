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

#[test]
fn every_numeric_key_is_bounded_and_the_message_names_the_bound() {
    let table = [
        (
            vec!["--workers", "256"],
            "workers = 256 is above its maximum 64",
        ),
        (
            // TOML integers stop at i64::MAX; u64::MAX is a type error.
            vec!["--set", "sse.retry_jitter_ms=9223372036854775807"],
            "sse.retry_jitter_ms = 9223372036854775807 is above its maximum",
        ),
        (
            vec!["--set", "sse.retry_jitter_ms=18446744073709551615"],
            "retry_jitter_ms",
        ),
        (
            vec!["--set", "limits.header_timeout_ms=0"],
            "below its minimum 1",
        ),
        (
            vec!["--set", "history.max_bytes=1"],
            "history.max_bytes = 1 is below",
        ),
        (
            vec!["--set", "limits.max_body_bytes=1048576"],
            "queue.max_bytes must exceed limits.max_body_bytes",
        ),
    ];
    for (args, want) in table {
        let err = Config::from_sources(&cli(&args), &env(&[])).unwrap_err().0;
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(Config::from_sources(&cli(&["--workers", "64"]), &env(&[])).is_ok());
}

#[test]
fn empty_or_blank_api_keys_are_refused() {
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 4] = [
        (vec!["--api-key", ""], vec![], "auth.keys[0] is empty"),
        (
            vec!["--api-key", "ok", "--api-key", " "],
            vec![],
            "auth.keys[1]",
        ),
        (
            vec![],
            vec![("REDIX_API_KEY", "")],
            "REDIX_API_KEY is set but empty",
        ),
        (
            vec!["--set", "auth.admin_keys=[\"\"]"],
            vec![],
            "auth.admin_keys[0]",
        ),
    ];
    for (args, vars, want) in cases {
        let err = Config::from_sources(&cli(&args), &env(&vars))
            .unwrap_err()
            .0;
        assert!(err.contains(want), "{args:?} {vars:?}: {err}");
    }
}

#[test]
fn unknown_environment_variables_are_ignored_but_the_file_and_flags_stay_strict() {
    let vars = env(&[
        ("REDIX_BIN", "/usr/bin/redix"),
        ("REDIX_SSE_PER_IP", "9"),
        ("REDIX_LIMITS_SSE_PER_IP", "7"),
    ]);
    let c = Config::from_sources(&cli(&[]), &vars).unwrap();
    assert_eq!(c.limits.sse_per_ip, 7);
    let err = Config::from_sources(&cli(&["--set", "limits.nonsense=1"]), &env(&[]));
    assert!(err.unwrap_err().0.contains("nonsense"));
}

#[test]
fn market_urls_are_ws_or_wss_and_a_ca_file_must_hold_a_certificate() {
    let ok = [
        "market.url=\"ws://127.0.0.1:9000\"",
        "market.url=\"wss://ws.finnhub.io\"",
        "market.url=\"wss://ws.finnhub.io?token=\"",
    ];
    for set in ok {
        let c = Config::from_sources(&cli(&["--set", set]), &env(&[]));
        assert!(c.is_ok(), "{set}: {:?}", c.err());
    }
    let table = [
        ("market.url=\"http://h:1\"", "market.url must be ws://"),
        ("market.url=\"wss://h:0?token=secret\"", "the port must be"),
        ("market.ca_file=\"/nonexistent/ca.pem\"", "market.ca_file"),
    ];
    for (set, want) in table {
        let args = ["--set", "market.url=\"wss://h\"", "--set", set];
        let err = Config::from_sources(&cli(&args), &env(&[])).unwrap_err().0;
        assert!(err.contains(want), "{set}: {err}");
        assert!(!err.contains("secret"), "{set}: {err}");
    }
}

#[test]
fn token_settings_are_checked_at_start_without_showing_a_secret() {
    let secret = r#"auth.token_secrets=["0123456789abcdef0123456789abcdef"]"#;
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let table: [Case; 6] = [
        (
            vec!["--set", "auth.subscribe=token"],
            vec![],
            "auth.subscribe = \"token\" needs at least one auth.token_secrets",
        ),
        (vec!["--set", "auth.subscribe=closed"], vec![], "subscribe"),
        (
            vec![
                "--set",
                r#"auth.token_secrets=["0123456789abcdef0123456789abcdef", "tiny"]"#,
            ],
            vec![],
            "auth.token_secrets[1] is shorter than 32 bytes",
        ),
        (
            vec!["--set", r#"auth.allowed_origins=["https://app.example/"]"#],
            vec![],
            "auth.allowed_origins[0]",
        ),
        (
            vec!["--set", r#"auth.allowed_origins=["app.example"]"#],
            vec![],
            "auth.allowed_origins[0]",
        ),
        (
            vec![],
            vec![("REDIX_AUTH_TOKEN_LEEWAY_MS", "300001")],
            "auth.token_leeway_ms = 300001 is above its maximum",
        ),
    ];
    for (args, vars, want) in table {
        let err = Config::from_sources(&cli(&args), &env(&vars))
            .unwrap_err()
            .0;
        assert!(err.contains(want), "{args:?} {vars:?}: {err}");
        assert!(!err.contains("tiny"), "{err}");
    }
    let c = Config::from_sources(
        &cli(&["--set", "auth.subscribe=token", "--set", secret]),
        &env(&[(
            "REDIX_AUTH_ALLOWED_ORIGINS",
            r#"["https://app.example:8443"]"#,
        )]),
    )
    .unwrap();
    assert_eq!(c.auth.subscribe, SubscribeMode::Token);
    assert_eq!(c.auth.max_conns_per_subject, DEFAULT_MAX_CONNS_PER_SUBJECT);
    assert_eq!(c.auth.allowed_origins, ["https://app.example:8443"]);
    assert_eq!(Config::default().auth.subscribe, SubscribeMode::Open);
}

#[test]
fn redis_cluster_seeds_are_alone_and_refuse_what_cluster_mode_lacks() {
    let seeds = r#"redis.cluster=["redis://127.0.0.1:7000","redis://127.0.0.1:7001"]"#;
    let c = Config::from_sources(&cli(&["--set", seeds]), &env(&[])).unwrap();
    assert!(c.redis.enabled() && c.redis.is_cluster());
    // The market feed works with Redis Cluster (its keys share one slot).
    let market = ["--set", seeds, "--set", r#"market.url="ws://h:1""#];
    assert!(Config::from_sources(&cli(&market), &env(&[])).is_ok());
    let refused = [
        (
            vec!["--set", r#"redis.cluster=["http://x"]"#],
            "redis.cluster",
        ),
        (
            vec!["--set", seeds, "--redis", "redis://h:1"],
            "excludes redis.url",
        ),
        (
            vec!["--set", seeds, "--set", r#"redis.sentinels=["h:1"]"#],
            "excludes redis.url",
        ),
        (
            vec!["--set", seeds, "--set", r#"redis.prefix="a{b""#],
            "hash tag",
        ),
    ];
    for (args, why) in refused {
        let err = Config::from_sources(&cli(&args), &env(&[])).unwrap_err().0;
        assert!(err.contains(why), "{args:?}: {err}");
    }
}
