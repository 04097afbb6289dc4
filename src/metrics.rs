//! Counters and the Prometheus text exposition. Every metric name is here.
//!
//! Each reactor owns one [`WorkerStats`] and is its only writer (relaxed
//! atomics on its own cache lines); a scrape sums them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bridge::shards::stats::{ShardFigures, LATENCY_BUCKETS_MS};
use crate::hub::HubFigures;

/// Counters and gauges of one reactor thread.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerStats {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    /// Open connections in the request/response phase.
    pub conns_http: AtomicU64,
    /// Open SSE streams.
    pub conns_sse: AtomicU64,
    /// Open WebSocket connections.
    pub conns_ws: AtomicU64,
    /// Connections sending their last bytes before closing.
    pub conns_closing: AtomicU64,
    pub requests: AtomicU64,
    pub rejected_ip_limit: AtomicU64,
    pub rejected_bad_request: AtomicU64,
    pub rejected_origin: AtomicU64,
    pub rejected_rate_limit: AtomicU64,
    /// Streams and upgrades refused in token mode: no or a bad token
    /// (401), a channel the token does not allow (403, also counted for a
    /// WebSocket subscribe), the subject at its connection cap (429).
    pub rejected_token: AtomicU64,
    pub rejected_channel: AtomicU64,
    pub rejected_subject_limit: AtomicU64,
    /// Streams ended because their token expired.
    pub token_expiries: AtomicU64,
    /// Subscriptions refused: the client IP's budget of new channels, or
    /// the connection's subscribe rate, ran out.
    pub rejected_new_channels: AtomicU64,
    pub rejected_subscribe_rate: AtomicU64,
    /// Job requests and publishes refused: the client's rate ran out.
    pub rejected_job_rate: AtomicU64,
    pub rejected_publish_rate: AtomicU64,
    /// New jobs the engine refused: the client had `limits.jobs_in_flight`.
    pub rejected_jobs_in_flight: AtomicU64,
    /// WebSocket connections closed for a protocol violation.
    pub ws_protocol_errors: AtomicU64,
    /// JSON protocol errors answered on WebSocket connections.
    pub ws_command_errors: AtomicU64,
    pub events_written: AtomicU64,
    pub bytes_written: AtomicU64,
    /// `writev` calls to clients.
    pub write_calls: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    /// `trades:*` events that replaced an older one in a full queue.
    pub conflated: AtomicU64,
    pub slow_disconnects: AtomicU64,
    /// Streams an operator ended (`POST /api/admin/disconnect`).
    pub admin_disconnects: AtomicU64,
    pub peer_resets: AtomicU64,
    pub accept_errors: AtomicU64,
    /// Connections closed because their queued bytes made no write
    /// progress within `limits.write_timeout_ms`.
    pub write_timeouts: AtomicU64,
    /// Times a connection's read budget for one turn ran out with bytes
    /// left (it is read again next turn).
    pub reads_deferred: AtomicU64,
    /// Times reading a connection paused because its answers piled up
    /// unread.
    pub read_pauses: AtomicU64,
    /// Entries in the reactor's timer wheel (a gauge).
    pub timer_entries: AtomicU64,
    /// Times accepting paused because the connection cap was reached.
    pub accept_pauses_cap: AtomicU64,
    /// Times accepting paused because accept(2) ran out of descriptors.
    pub accept_pauses_fds: AtomicU64,
    /// Reactor turns (poll return to the end of flushing) that took at
    /// least 10 ms, 100 ms, 1 s.
    pub slow_turns_10ms: AtomicU64,
    pub slow_turns_100ms: AtomicU64,
    pub slow_turns_1s: AtomicU64,
    /// The longest turn so far, ms (a gauge per reactor).
    pub turn_max_ms: AtomicU64,
    /// 1 while this reactor holds stream writes to coalesce them.
    pub coalescing: AtomicU64,
}

impl WorkerStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn open(&self) -> u64 {
        self.conns_http.load(Ordering::Relaxed)
            + self.conns_sse.load(Ordering::Relaxed)
            + self.conns_ws.load(Ordering::Relaxed)
            + self.conns_closing.load(Ordering::Relaxed)
    }
}

/// Process-wide figures a scrape adds to the per-worker sums.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessFigures {
    pub open_fds: u64,
    pub fd_limit: u64,
    pub max_connections: u64,
    pub hub: HubFigures,
    pub published: u64,
    pub duplicates: u64,
    pub untracked: u64,
    pub replayed: u64,
    pub resets: u64,
    pub inbox_drops: u64,
    pub evicted: u64,
    pub ip_tracked: u64,
    pub ws_compressions: u64,
    pub sse_gzip_compressions: u64,
}

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Field = fn(&WorkerStats) -> &AtomicU64;

/// (name, type, help, label, field) for the summed per-worker metrics.
#[rustfmt::skip]
const SUMMED: &[(&str, &str, &str, &str, Field)] = &[
    ("redix_connections", "gauge", "Open client connections by transport.", "transport=\"sse\"", |s| &s.conns_sse),
    ("redix_connections", "gauge", "", "transport=\"ws\"", |s| &s.conns_ws),
    ("redix_connections", "gauge", "", "transport=\"http\"", |s| &s.conns_http),
    ("redix_connections", "gauge", "", "transport=\"closing\"", |s| &s.conns_closing),
    ("redix_connections_accepted_total", "counter", "Connections accepted.", "", |s| &s.accepted),
    ("redix_connections_closed_total", "counter", "Connections closed.", "", |s| &s.closed),
    ("redix_connections_rejected_total", "counter", "Connections, streams or requests refused, by reason.", "reason=\"ip_limit\"", |s| &s.rejected_ip_limit),
    ("redix_connections_rejected_total", "counter", "", "reason=\"bad_request\"", |s| &s.rejected_bad_request),
    ("redix_connections_rejected_total", "counter", "", "reason=\"origin\"", |s| &s.rejected_origin),
    ("redix_connections_rejected_total", "counter", "", "reason=\"rate_limit\"", |s| &s.rejected_rate_limit),
    ("redix_connections_rejected_total", "counter", "", "reason=\"token\"", |s| &s.rejected_token),
    ("redix_connections_rejected_total", "counter", "", "reason=\"channel_not_allowed\"", |s| &s.rejected_channel),
    ("redix_connections_rejected_total", "counter", "", "reason=\"subject_limit\"", |s| &s.rejected_subject_limit),
    ("redix_connections_rejected_total", "counter", "", "reason=\"new_channels\"", |s| &s.rejected_new_channels),
    ("redix_connections_rejected_total", "counter", "", "reason=\"subscribe_rate\"", |s| &s.rejected_subscribe_rate),
    ("redix_connections_rejected_total", "counter", "", "reason=\"job_rate\"", |s| &s.rejected_job_rate),
    ("redix_connections_rejected_total", "counter", "", "reason=\"publish_rate\"", |s| &s.rejected_publish_rate),
    ("redix_connections_rejected_total", "counter", "", "reason=\"jobs_in_flight\"", |s| &s.rejected_jobs_in_flight),
    ("redix_http_requests_total", "counter", "HTTP requests parsed.", "", |s| &s.requests),
    ("redix_events_written_total", "counter", "Data events completely written to clients.", "", |s| &s.events_written),
    ("redix_bytes_written_total", "counter", "Bytes written to clients.", "", |s| &s.bytes_written),
    ("redix_write_calls_total", "counter", "writev calls to clients (events coalesce into fewer).", "", |s| &s.write_calls),
    ("redix_events_dropped_total", "counter", "Data events dropped, by reason.", "reason=\"queue_full\"", |s| &s.dropped_queue_full),
    ("redix_events_conflated_total", "counter", "trades:* events that took the place of an older one of their symbol in a full queue.", "", |s| &s.conflated),
    ("redix_slow_disconnects_total", "counter", "Connections closed as slow consumers.", "", |s| &s.slow_disconnects),
    ("redix_token_expiries_total", "counter", "Streams and WebSockets ended because their subscription token expired.", "", |s| &s.token_expiries),
    ("redix_admin_disconnects_total", "counter", "Streams an operator ended (POST /api/admin/disconnect).", "", |s| &s.admin_disconnects),
    ("redix_peer_resets_total", "counter", "Connections the peer reset or broke.", "", |s| &s.peer_resets),
    ("redix_ws_protocol_errors_total", "counter", "WebSocket connections closed for a protocol violation.", "", |s| &s.ws_protocol_errors),
    ("redix_ws_command_errors_total", "counter", "WebSocket JSON commands answered with an error.", "", |s| &s.ws_command_errors),
    ("redix_accept_errors_total", "counter", "accept(2) failures other than WouldBlock.", "", |s| &s.accept_errors),
    ("redix_write_timeouts_total", "counter", "Connections closed because queued bytes made no write progress within limits.write_timeout_ms.", "", |s| &s.write_timeouts),
    ("redix_reads_deferred_total", "counter", "Times a connection was put off to be read next turn (its read budget ran out, or paused reading resumed).", "", |s| &s.reads_deferred),
    ("redix_read_pauses_total", "counter", "Times reading a connection paused until its unread answers drained.", "", |s| &s.read_pauses),
    ("redix_timer_entries", "gauge", "Entries in the reactors' timer wheels.", "", |s| &s.timer_entries),
    ("redix_accept_pauses_total", "counter", "Times accepting paused, by reason (the connection cap resumes below 90%; out of fds backs off).", "reason=\"conn_cap\"", |s| &s.accept_pauses_cap),
    ("redix_accept_pauses_total", "counter", "", "reason=\"fd_limit\"", |s| &s.accept_pauses_fds),
    ("redix_reactor_slow_turns_total", "counter", "Reactor turns (poll return to the end of flushing) that took at least this long; every client of that reactor waited as long.", "over=\"10ms\"", |s| &s.slow_turns_10ms),
    ("redix_reactor_slow_turns_total", "counter", "", "over=\"100ms\"", |s| &s.slow_turns_100ms),
    ("redix_reactor_slow_turns_total", "counter", "", "over=\"1s\"", |s| &s.slow_turns_1s),
    ("redix_reactors_coalescing", "gauge", "Reactors holding stream writes to coalesce them (queue.coalesce_ms, above queue.coalesce_above deliveries/s).", "", |s| &s.coalescing),
];

/// Renders the exposition text.
pub fn render(workers: &[WorkerStats], p: &ProcessFigures) -> String {
    let mut out = String::with_capacity(4096);
    let mut last_name = "";
    for (name, kind, help, label, field) in SUMMED {
        if *name != last_name {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            last_name = name;
        }
        let sum: u64 = workers
            .iter()
            .map(|w| field(w).load(Ordering::Relaxed))
            .sum();
        match label.is_empty() {
            true => {
                let _ = writeln!(out, "{name} {sum}");
            }
            false => {
                let _ = writeln!(out, "{name}{{{label}}} {sum}");
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP redix_worker_connections Open connections per reactor thread.\n# TYPE redix_worker_connections gauge"
    );
    for (i, w) in workers.iter().enumerate() {
        let _ = writeln!(
            out,
            "redix_worker_connections{{worker=\"{i}\"}} {}",
            w.open()
        );
    }
    let _ = writeln!(
        out,
        "# HELP redix_worker_turn_max_ms The longest turn of each reactor thread since start (counted from 10 ms).\n# TYPE redix_worker_turn_max_ms gauge"
    );
    for (i, w) in workers.iter().enumerate() {
        let max = w.turn_max_ms.load(Ordering::Relaxed);
        let _ = writeln!(out, "redix_worker_turn_max_ms{{worker=\"{i}\"}} {max}");
    }
    #[rustfmt::skip]
    let h = &p.hub;
    let gauges: [(&str, &str, &str, u64); 17] = [
        (
            "redix_open_fds",
            "gauge",
            "Open file descriptors of the process.",
            p.open_fds,
        ),
        ("redix_fd_limit", "gauge", "Soft RLIMIT_NOFILE.", p.fd_limit),
        (
            "redix_max_connections",
            "gauge",
            "Global connection cap.",
            p.max_connections,
        ),
        (
            "redix_hub_channels",
            "gauge",
            "Channels with subscribers or history.",
            h.channels as u64,
        ),
        (
            "redix_history_events",
            "gauge",
            "Events held in channel histories.",
            h.history_events as u64,
        ),
        (
            "redix_history_bytes",
            "gauge",
            "Bytes held in channel histories.",
            h.history_bytes as u64,
        ),
        (
            "redix_dedupe_keys",
            "gauge",
            "Publisher ids remembered for deduplication.",
            h.dedupe_keys as u64,
        ),
        (
            "redix_published_total",
            "counter",
            "Events published.",
            p.published,
        ),
        (
            "redix_publish_duplicates_total",
            "counter",
            "Publishes recognised as duplicates by their id.",
            p.duplicates,
        ),
        (
            "redix_history_untracked_total",
            "counter",
            "Events kept in no history because the channel cap was reached.",
            p.untracked,
        ),
        (
            "redix_replayed_total",
            "counter",
            "Events replayed to resuming subscribers.",
            p.replayed,
        ),
        (
            "redix_history_evicted_total",
            "counter",
            "Events evicted, oldest first over all channels, because histories reached history.max_bytes.",
            p.evicted,
        ),
        (
            "redix_resets_total",
            "counter",
            "Resumes from a point older than the history.",
            p.resets,
        ),
        (
            "redix_inbox_dropped_total",
            "counter",
            "Events lost because a reactor inbox was full.",
            p.inbox_drops,
        ),
        (
            "redix_ip_limiter_clients",
            "gauge",
            "Client IPs (v6 /64s) holding SSE or WebSocket slots.",
            p.ip_tracked,
        ),
        (
            "redix_ws_compressions_total",
            "counter",
            "Events compressed for permessage-deflate (once per event and window size).",
            p.ws_compressions,
        ),
        (
            "redix_sse_gzip_compressions_total",
            "counter",
            "Events compressed for gzip SSE streams (once per event).",
            p.sse_gzip_compressions,
        ),
    ];
    write_singles(&mut out, &gauges);
    out
}

fn write_singles(out: &mut String, metrics: &[(&str, &str, &str, u64)]) {
    for (name, kind, help, value) in metrics {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

/// The Redis link, in Redis mode.
#[derive(Debug, Default, Clone, Copy)]
pub struct RedisFigures {
    /// Ready: both connections up and the canary coming back in time.
    pub up: bool,
    pub pubsub_up: bool,
    pub command_up: bool,
    pub reconnects: u64,
    pub received: u64,
    pub lag_ms: u64,
    pub backlog_bytes: u64,
    pub canary_rtt_ms: u64,
    pub subscribed: u64,
    pub dropped: u64,
    pub publishes: u64,
    pub publish_errors: u64,
    pub loads: u64,
    pub repeats: u64,
    pub held_dropped: u64,
    pub data_losses: u64,
    pub unacked: u64,
    pub master_switches: u64,
}

/// Appends the Redis metrics.
#[rustfmt::skip]
pub fn render_redis(out: &mut String, r: &RedisFigures) {
    let metrics: [(&str, &str, &str, u64); 18] = [
        ("redix_redis_up", "gauge", "1 when the Redis round trip works (what /readyz checks).", u64::from(r.up)),
        ("redix_redis_pubsub_connected", "gauge", "1 while the pub/sub connection (Redis Cluster: every master's link) is up and its canary returns.", u64::from(r.pubsub_up)),
        ("redix_redis_command_connected", "gauge", "1 while the command connection is up.", u64::from(r.command_up)),
        ("redix_redis_reconnects_total", "counter", "Redis connections lost and made again.", r.reconnects),
        ("redix_redis_messages_total", "counter", "Pub/sub messages received.", r.received),
        ("redix_redis_pubsub_lag_ms", "gauge", "Publish to arrival here of the last pub/sub message.", r.lag_ms),
        ("redix_redis_pubsub_backlog_bytes", "gauge", "Bytes received on the pub/sub connection and not yet handled.", r.backlog_bytes),
        ("redix_redis_canary_rtt_ms", "gauge", "Round trip of the last readiness canary.", r.canary_rtt_ms),
        ("redix_redis_channels_subscribed", "gauge", "Channels subscribed on the pub/sub connection.", r.subscribed),
        ("redix_redis_commands_dropped_total", "counter", "Publishes and loads refused because the command queue was full.", r.dropped),
        ("redix_redis_publishes_total", "counter", "Publishes run through Redis by this node.", r.publishes),
        ("redix_redis_publish_errors_total", "counter", "Publishes Redis failed.", r.publish_errors),
        ("redix_redis_loads_total", "counter", "Channel histories loaded from Redis streams.", r.loads),
        ("redix_redis_repeats_total", "counter", "Pub/sub events this node already had (after a reload).", r.repeats),
        ("redix_redis_held_dropped_total", "counter", "Live events dropped while their channel loaded (too many held).", r.held_dropped),
        ("redix_redis_data_losses_total", "counter", "Reconnects that found Redis without the newest id this node saw (restarted empty or flushed).", r.data_losses),
        ("redix_redis_publishes_unacked_total", "counter", "Publishes answered 503 because fewer than redis.min_replicas_ack replicas confirmed them in time.", r.unacked),
        ("redix_redis_master_switches_total", "counter", "Times Sentinel moved the master this node follows.", r.master_switches),
    ];
    write_singles(out, &metrics);
}

/// Redis Cluster: one series per shard (labelled by its master's
/// address, so as many as the cluster has masters) for each of these.
#[rustfmt::skip]
const SHARD_SERIES: [(&str, &str, &str); 5] = [
    ("redix_redis_shard_up", "gauge", "1 while this shard's pub/sub link is up and its canary returns."),
    ("redix_redis_shard_channels", "gauge", "Channels SSUBSCRIBEd on this shard's link."),
    ("redix_redis_shard_reconnects_total", "counter", "This shard's pub/sub link lost (or refused) and tried again."),
    ("redix_redis_shard_redirects_total", "counter", "Slot moves the subscriber followed away from this shard: MOVED/ASK answers to SSUBSCRIBE and sunsubscribe pushed by Redis."),
    ("redix_redis_shard_publish_pipelines_total", "counter", "Pipelines of publishes this node sent to this shard's master, one round trip each (publishes per pipeline: redix_redis_shard_publish_seconds_count over this)."),
];

/// Appends the per-shard metrics of Redis Cluster mode.
pub fn render_shards(out: &mut String, rows: &[(String, ShardFigures)]) {
    for (i, (name, kind, help)) in SHARD_SERIES.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard, r) in rows {
            let value = [
                u64::from(r.up),
                r.channels,
                r.reconnects,
                r.redirects,
                r.publish_pipelines,
            ][i];
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {value}");
        }
    }
    let name = "redix_redis_shard_publish_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Publishes run on this shard's master (their script, redirects followed included).\n# TYPE {name} histogram"
    );
    for (shard, r) in rows {
        let mut below = 0;
        for (le, n) in LATENCY_BUCKETS_MS.iter().zip(r.latency_buckets) {
            below += n;
            let le = *le as f64 / 1000.0;
            let _ = writeln!(
                out,
                "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {below}"
            );
        }
        let count = r.latency_count;
        let sum = r.latency_sum_us as f64 / 1e6;
        let _ = writeln!(
            out,
            "{name}_bucket{{shard=\"{shard}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {count}");
    }
}

/// The market link, with `market.url`.
#[derive(Debug, Default, Clone, Copy)]
pub struct MarketFigures {
    pub up: bool,
    pub reconnects: u64,
    pub trades: u64,
    pub symbols: u64,
    pub refused: u64,
    pub breaker_open: bool,
    pub simulated: bool,
    pub lease_held: bool,
    pub fence: u64,
    pub leases_taken: u64,
}

#[rustfmt::skip]
pub fn render_market(out: &mut String, m: &MarketFigures) {
    let metrics: [(&str, &str, &str, u64); 10] = [
        ("redix_market_breaker_open", "gauge", "1 while the circuit breaker is open (subscribers were told the upstream is unavailable).", u64::from(m.breaker_open)),
        ("redix_market_up", "gauge", "1 while the market upstream connection is up.", u64::from(m.up)),
        ("redix_market_reconnects_total", "counter", "Market upstream connections lost (or refused) and tried again.", m.reconnects),
        ("redix_market_trades_total", "counter", "Trades received from the market upstream.", m.trades),
        ("redix_market_symbols", "gauge", "Symbols subscribed upstream (one per symbol, whatever the clients).", m.symbols),
        ("redix_market_refused_symbols", "gauge", "Symbols wanted but over the upstream plan's limit.", m.refused),
        ("redix_market_simulated", "gauge", "1 while trades come from the built-in simulator (no market.url): not real market data.", u64::from(m.simulated)),
        ("redix_market_lease_held", "gauge", "Redis mode: 1 while this node holds the market lease (and the cluster's one upstream connection).", u64::from(m.lease_held)),
        ("redix_market_lease_fence", "gauge", "Redis mode: the fencing token of the market lease as this node last saw it (its own while it holds it).", m.fence),
        ("redix_market_leases_taken_total", "counter", "Redis mode: times this node took the market lease.", m.leases_taken),
    ];
    write_singles(out, &metrics);
}

/// The job engine (see `jobs`).
#[derive(Debug, Default, Clone, Copy)]
pub struct JobFigures {
    pub submitted: u64,
    pub joined: u64,
    pub cache_hits: u64,
    pub completed: u64,
    pub failed: u64,
    pub stalled: u64,
    pub pending: u64,
    pub running: u64,
    pub refused: u64,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker: u64,
    pub breaker_opened: u64,
}

pub fn render_jobs(out: &mut String, j: &JobFigures) {
    let metrics: [(&str, &str, &str, u64); 11] = [
        (
            "redix_jobs_submitted_total",
            "counter",
            "Jobs created (summarize and ask).",
            j.submitted,
        ),
        (
            "redix_jobs_joined_total",
            "counter",
            "Summarize requests that joined the job in flight for their URL.",
            j.joined,
        ),
        (
            "redix_jobs_cache_hits_total",
            "counter",
            "Summarize requests answered from the summary cache.",
            j.cache_hits,
        ),
        (
            "redix_jobs_completed_total",
            "counter",
            "Jobs that ended with done.",
            j.completed,
        ),
        (
            "redix_jobs_failed_total",
            "counter",
            "Jobs that ended with an error (stalled ones included).",
            j.failed,
        ),
        (
            "redix_jobs_stalled_total",
            "counter",
            "Jobs ended because their worker sent nothing for jobs.stall_ms.",
            j.stalled,
        ),
        (
            "redix_jobs_pending",
            "gauge",
            "Jobs queued and not picked up by a worker.",
            j.pending,
        ),
        (
            "redix_jobs_running",
            "gauge",
            "Jobs a worker is running.",
            j.running,
        ),
        (
            "redix_jobs_refused_total",
            "counter",
            "Job requests refused because the engine's queue was full.",
            j.refused,
        ),
        (
            "redix_jobs_breaker_state",
            "gauge",
            "The job breaker: 0 closed, 1 open (submissions get 503), 2 half-open (one probe).",
            j.breaker,
        ),
        (
            "redix_jobs_breaker_opened_total",
            "counter",
            "Times the job breaker opened.",
            j.breaker_opened,
        ),
    ];
    write_singles(out, &metrics);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_workers_and_declares_each_name_once() {
        let w = [WorkerStats::default(), WorkerStats::default()];
        WorkerStats::add(&w[0].conns_sse, 3);
        WorkerStats::add(&w[1].conns_sse, 4);
        WorkerStats::add(&w[1].dropped_queue_full, 2);
        let text = render(
            &w,
            &ProcessFigures {
                open_fds: 9,
                ..Default::default()
            },
        );
        assert!(text.contains("redix_connections{transport=\"sse\"} 7\n"));
        assert!(text.contains("redix_events_dropped_total{reason=\"queue_full\"} 2\n"));
        assert!(text.contains("redix_worker_connections{worker=\"1\"} 4\n"));
        assert!(text.contains("redix_open_fds 9\n"));
        assert_eq!(text.matches("# TYPE redix_connections gauge").count(), 1);
    }
}
