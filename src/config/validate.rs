//! Checks a loaded configuration before anything starts: every numeric key
//! within its bounds (the message names the key and the bound it crossed),
//! keys that must agree with each other, API keys that are not empty and
//! subscription-token secrets that are long enough.

use super::{Config, ConfigError};
use crate::hub::MAX_REACTORS;
use crate::market::connect::{check_ca_file, without_query, Target};

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;
const MIB: u64 = 1 << 20;

/// A numeric key, its value and its inclusive bounds.
type Bound = (&'static str, u64, u64, u64);

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (key, value, min, max) in self.bounds() {
            if value < min {
                return Err(invalid(format!(
                    "{key} = {value} is below its minimum {min}"
                )));
            }
            if value > max {
                return Err(invalid(format!(
                    "{key} = {value} is above its maximum {max}"
                )));
            }
        }
        if !crate::logging::valid_level(&self.log_level) {
            return Err(invalid(format!(
                "log_level = {:?}: use off, error, warn, info, debug or trace",
                self.log_level
            )));
        }
        self.check_keys()?;
        self.check_test_hooks()?;
        self.check_relations()?;
        self.check_redis()
    }

    /// Test hooks leak resources on purpose: a production (release)
    /// build must not serve them, whatever its configuration says.
    fn check_test_hooks(&self) -> Result<(), ConfigError> {
        if self.debug.test_hooks && !cfg!(debug_assertions) {
            return Err(invalid(
                "debug.test_hooks: test hooks exist in debug builds only".into(),
            ));
        }
        Ok(())
    }

    /// Every numeric key with its bounds.
    #[rustfmt::skip]
    fn bounds(&self) -> Vec<Bound> {
        let n = |v: usize| v as u64;
        let (l, s, w, q) = (&self.limits, &self.sse, &self.ws, &self.queue);
        let (h, r) = (&self.history, &self.redis);
        vec![
            ("workers", n(self.workers), 0, n(MAX_REACTORS)),
            ("auth.token_leeway_ms", self.auth.token_leeway_ms, 0, 300_000),
            ("auth.max_conns_per_subject", u64::from(self.auth.max_conns_per_subject), 0, 1_000_000),
            ("backlog", self.backlog.max(0) as u64, 1, 65_535),
            ("limits.requests_per_sec", u64::from(l.requests_per_sec), 0, 1_000_000),
            ("limits.request_burst", u64::from(l.request_burst), 1, 1_000_000),
            ("limits.sse_per_ip", u64::from(l.sse_per_ip), 1, 1_000_000),
            ("limits.ws_per_ip", u64::from(l.ws_per_ip), 1, 1_000_000),
            ("limits.http_per_ip", u64::from(l.http_per_ip), 1, 1_000_000),
            ("limits.new_channels_per_min", u64::from(l.new_channels_per_min), 0, 1_000_000),
            ("limits.new_channel_burst", u64::from(l.new_channel_burst), 1, 1_000_000),
            ("limits.max_connections", n(l.max_connections), 0, 10_000_000),
            ("limits.header_timeout_ms", l.header_timeout_ms, 1, HOUR_MS),
            ("limits.write_timeout_ms", l.write_timeout_ms, 1, HOUR_MS),
            ("limits.keepalive_timeout_ms", l.keepalive_timeout_ms, 1, HOUR_MS),
            ("limits.max_header_bytes", n(l.max_header_bytes), 256, MIB),
            ("limits.max_body_bytes", n(l.max_body_bytes), 0, 64 * MIB),
            ("limits.jobs_per_min", u64::from(l.jobs_per_min), 0, 1_000_000),
            ("limits.job_burst", u64::from(l.job_burst), 1, 1_000_000),
            ("limits.jobs_in_flight", u64::from(l.jobs_in_flight), 0, 10_000_000),
            ("limits.publishes_per_sec", u64::from(l.publishes_per_sec), 0, 10_000_000),
            ("limits.publish_burst", u64::from(l.publish_burst), 1, 10_000_000),
            ("sse.heartbeat_ms", s.heartbeat_ms, 1, HOUR_MS),
            ("sse.retry_ms", s.retry_ms, 0, HOUR_MS),
            ("sse.retry_jitter_ms", s.retry_jitter_ms, 0, HOUR_MS),
            ("sse.max_channels", n(s.max_channels), 1, 1024),
            ("ws.ping_ms", w.ping_ms, 1, HOUR_MS),
            ("ws.idle_timeout_ms", w.idle_timeout_ms, 1, DAY_MS),
            ("ws.message_timeout_ms", w.message_timeout_ms, 1, DAY_MS),
            ("ws.subscribes_per_min", u64::from(w.subscribes_per_min), 0, 1_000_000),
            ("ws.subscribe_burst", u64::from(w.subscribe_burst), 1, 1_000_000),
            ("ws.max_message_bytes", n(w.max_message_bytes), 125, 64 * MIB),
            ("ws.max_subscriptions", n(w.max_subscriptions), 1, 4096),
            ("ws.deflate_min_bytes", n(w.deflate_min_bytes), 0, 64 * MIB),
            ("queue.max_events", n(q.max_events), 1, 1_000_000),
            ("queue.max_bytes", n(q.max_bytes), 1024, 1024 * MIB),
            ("queue.slow_warnings", u64::from(q.slow_warnings), 1, 1_000_000),
            ("queue.coalesce_ms", q.coalesce_ms, 0, 1_000),
            ("queue.coalesce_above", q.coalesce_above, 0, 1_000_000_000),
            ("history.max_events", n(h.max_events), 0, 1_000_000),
            ("history.max_age_ms", h.max_age_ms, 1, 30 * DAY_MS),
            ("history.sweep_ms", h.sweep_ms, 1, DAY_MS),
            ("history.max_channels", n(h.max_channels), 1, 10_000_000),
            ("history.max_bytes", n(h.max_bytes), MIB, 1 << 40),
            ("publish.dedupe_ttl_ms", self.publish.dedupe_ttl_ms, 1, 30 * DAY_MS),
            ("publish.dedupe_max", n(self.publish.dedupe_max), 0, 100_000_000),
            ("batch.window_ms", self.batch.window_ms, 0, 10_000),
            ("batch.max_events", n(self.batch.max_events), 1, 10_000),
            ("tcp.send_buffer", n(self.tcp.send_buffer), 0, 64 * MIB),
            ("shutdown.drain_ms", self.shutdown.drain_ms, 0, HOUR_MS),
            ("shutdown.linger_ms", self.shutdown.linger_ms, 0, HOUR_MS),
            ("redis.timeout_ms", r.timeout_ms, 1, HOUR_MS),
            ("redis.wait_ms", r.wait_ms, 1, HOUR_MS),
            ("redis.queue", n(r.queue), 1, 10_000_000),
            ("redis.canary_ms", r.canary_ms, 1, HOUR_MS),
            ("redis.ready_within_ms", r.ready_within_ms, 1, HOUR_MS),
            ("redis.backoff_min_ms", r.backoff_min_ms, 1, HOUR_MS),
            ("redis.backoff_max_ms", r.backoff_max_ms, 1, HOUR_MS),
            ("market.linger_ms", self.market.linger_ms, 0, DAY_MS),
            ("market.silence_ms", self.market.silence_ms, 100, DAY_MS),
            ("market.max_symbols", n(self.market.max_symbols), 1, 100_000),
            ("market.backoff_min_ms", self.market.backoff_min_ms, 1, HOUR_MS),
            ("market.backoff_max_ms", self.market.backoff_max_ms, 1, HOUR_MS),
            ("market.lease_ms", self.market.lease_ms, 300, HOUR_MS),
            ("jobs.wait_ms", self.jobs.wait_ms, 0, 10_000),
            ("jobs.max_wait_ms", self.jobs.max_wait_ms, 0, 10_000),
            ("jobs.ttl_ms", self.jobs.ttl_ms, 1_000, DAY_MS),
            ("jobs.cache_ttl_ms", self.jobs.cache_ttl_ms, 0, 30 * DAY_MS),
            ("jobs.cache_max", n(self.jobs.cache_max), 0, 10_000_000),
            ("jobs.max_jobs", n(self.jobs.max_jobs), 1, 10_000_000),
            ("jobs.max_pending", n(self.jobs.max_pending), 1, 10_000_000),
            ("jobs.progress_ms", self.jobs.progress_ms, 100, DAY_MS),
            ("jobs.cooldown_ms", self.jobs.cooldown_ms, 100, HOUR_MS),
            ("jobs.stall_ms", self.jobs.stall_ms, 100, DAY_MS),
            ("jobs.visibility_ms", self.jobs.visibility_ms, 100, DAY_MS),
            ("jobs.max_attempts", u64::from(self.jobs.max_attempts), 1, 100),
            ("jobs.max_events", n(self.jobs.max_events), 1, 1_000_000),
            ("jobs.parked_per_reactor", n(self.jobs.parked_per_reactor), 1, 1_000_000),
            ("jobs.demo_token_ms", self.jobs.demo_token_ms, 0, 60_000),
            ("jobs.demo_concurrency", n(self.jobs.demo_concurrency), 1, 100_000),
        ]
    }

    /// No API key may be empty or blank: it would match an empty header.
    fn check_keys(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        let lists = [
            ("auth.keys", &a.keys),
            ("auth.publish_keys", &a.publish_keys),
            ("auth.admin_keys", &a.admin_keys),
        ];
        for (name, keys) in lists {
            if let Some(i) = keys.iter().position(|k| k.trim().is_empty()) {
                return Err(invalid(format!(
                    "{name}[{i}] is empty or blank; an API key needs at least one visible character"
                )));
            }
        }
        a.check_tokens().map_err(invalid)
    }

    /// Keys whose values must agree.
    fn check_relations(&self) -> Result<(), ConfigError> {
        let checks = [
            (
                self.ws.idle_timeout_ms >= self.ws.ping_ms,
                "ws.idle_timeout_ms must be at least ws.ping_ms",
            ),
            (
                self.redis.ready_within_ms >= self.redis.canary_ms,
                "redis.canary_ms must be at most redis.ready_within_ms",
            ),
            (
                self.redis.backoff_max_ms >= self.redis.backoff_min_ms,
                "redis.backoff_min_ms must be at most redis.backoff_max_ms",
            ),
            (
                // One published event (the body, plus its envelope) must
                // fit a subscriber's queue, or it is dropped for everyone.
                self.queue.max_bytes >= self.limits.max_body_bytes + 1024,
                "queue.max_bytes must exceed limits.max_body_bytes by at least 1024 (one event must fit a subscriber's queue)",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err(invalid(msg.to_string())),
            None => Ok(()),
        }
    }

    fn check_redis(&self) -> Result<(), ConfigError> {
        let r = &self.redis;
        if !r.url.is_empty() && redis::parse_redis_url(&r.url).is_none() {
            return Err(invalid("redis.url must look like redis://host:port".into()));
        }
        if let Some(bad) = r
            .sentinels
            .iter()
            .find(|s| crate::bridge::sentinel::parse_addr(s).is_err())
        {
            return Err(invalid(format!(
                "redis.sentinels: {bad:?} is not host:port"
            )));
        }
        if r.sentinels.len() > 32 {
            return Err(invalid("redis.sentinels: at most 32".into()));
        }
        if !r.sentinels.is_empty() && r.master_name.is_empty() {
            return Err(invalid(
                "redis.master_name must name the master with redis.sentinels".into(),
            ));
        }
        if r.min_replicas_ack > 64 {
            return Err(invalid("redis.min_replicas_ack must be at most 64".into()));
        }
        if r.min_replicas_ack > 0 && (r.ack_timeout_ms == 0 || r.ack_timeout_ms >= r.wait_ms) {
            return Err(invalid(
                "redis.ack_timeout_ms must be above 0 and below redis.wait_ms (the request would time out first)".into(),
            ));
        }
        if self.redis.prefix.len() > 64 {
            return Err(invalid("redis.prefix must be at most 64 bytes".into()));
        }
        self.check_cluster()?;
        self.check_market()
    }

    /// `redis.cluster`: seed URLs, alone, and only what cluster mode
    /// supports (see README "Redis Cluster").
    fn check_cluster(&self) -> Result<(), ConfigError> {
        let r = &self.redis;
        if !r.is_cluster() {
            return Ok(());
        }
        if let Some(bad) = r
            .cluster
            .iter()
            .find(|u| crate::bridge::Endpoint::parse(u).is_err())
        {
            return Err(invalid(format!(
                "redis.cluster: {bad:?} is not a redis://host:port URL"
            )));
        }
        let refusals = [
            (r.cluster.len() > 64, "redis.cluster: at most 64 seed nodes"),
            (
                !r.url.is_empty() || !r.sentinels.is_empty(),
                "redis.cluster excludes redis.url and redis.sentinels (give one)",
            ),
            (
                r.prefix.contains(['{', '}']),
                "redis.prefix must not contain { or } with redis.cluster (they make the hash tag)",
            ),
        ];
        match refusals.iter().find(|(bad, _)| *bad) {
            Some((_, msg)) => Err(invalid(msg.to_string())),
            None => Ok(()),
        }
    }

    fn check_market(&self) -> Result<(), ConfigError> {
        let m = &self.market;
        if !m.enabled() {
            return Ok(());
        }
        if let Err(e) = Target::parse(&m.url) {
            return Err(invalid(format!(
                "market.url must be ws://host[:port][/path] or wss://host[:port][/path] ({}: {e})",
                without_query(&m.url)
            )));
        }
        if m.backoff_max_ms < m.backoff_min_ms {
            return Err(invalid(
                "market.backoff_min_ms must be at most market.backoff_max_ms".into(),
            ));
        }
        if !m.ca_file.is_empty() {
            check_ca_file(&m.ca_file).map_err(|e| invalid(format!("market.ca_file: {e}")))?;
        }
        Ok(())
    }
}

fn invalid(message: String) -> ConfigError {
    ConfigError(format!("invalid config: {message}"))
}
