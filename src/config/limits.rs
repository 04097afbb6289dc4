//! The `[limits]` section: what one client (an IP, or an API key) may
//! hold and how fast it may ask.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// HTTP requests per second per client IP, refilled continuously.
pub const DEFAULT_REQUESTS_PER_SEC: u32 = 20;
/// Requests a client may make at once before the rate applies.
pub const DEFAULT_REQUEST_BURST: u32 = 60;
/// Concurrent SSE streams per client IP (IPv6 counted per /64).
pub const DEFAULT_SSE_PER_IP: u32 = 20;
/// Time for a request's headers and body to arrive once its first byte
/// came.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// An idle keep-alive connection (no request in progress) is closed after
/// this long.
pub const DEFAULT_KEEPALIVE_TIMEOUT_MS: u64 = 15_000;
/// A connection whose queued bytes make no write progress for this long
/// is closed: the peer stopped reading.
pub const DEFAULT_WRITE_TIMEOUT_MS: u64 = 30_000;
/// Plain HTTP (keep-alive) connections per client IP (IPv6 per /64).
pub const DEFAULT_HTTP_PER_IP: u32 = 64;
/// Channels a client IP may bring into existence (subscribing to a name
/// nobody here listens to) per minute, and at once.
pub const DEFAULT_NEW_CHANNELS_PER_MIN: u32 = 600;
pub const DEFAULT_NEW_CHANNEL_BURST: u32 = 200;
/// Largest request head (request line + headers); larger gets 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8 * 1024;
/// Largest request body; larger gets 413.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Concurrent WebSocket connections per client IP.
pub const DEFAULT_WS_PER_IP: u32 = 50;
/// New jobs (`POST /api/summarize`, `GET /api/ask?q=`) per client per
/// minute, and at once: a person asking by hand never meets it, a script
/// looping on the endpoint does within seconds.
pub const DEFAULT_JOBS_PER_MIN: u32 = 60;
pub const DEFAULT_JOB_BURST: u32 = 20;
/// Jobs one client may have running or queued at once (a job counts from
/// its creation to its `done` or `error`).
pub const DEFAULT_JOBS_IN_FLIGHT: u32 = 20;
/// Publishes per second per API key: off by default. Every publish is
/// already authenticated (a key, or this machine when no key is
/// configured), so the publishers this could slow are the operator's own
/// services, whose honest rates run from a few a minute to thousands a
/// second; any fixed default would either throttle a legitimate feed after
/// an upgrade or sit too high to contain anything. Set it per deployment,
/// a few times a key's peak, to contain a leaked key or a runaway loop.
pub const DEFAULT_PUBLISHES_PER_SEC: u32 = 0;
pub const DEFAULT_PUBLISH_BURST: u32 = 200;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// HTTP requests per second per client IP (token bucket); 0 disables.
    /// Loopback clients and requests with a valid API key are exempt.
    pub requests_per_sec: u32,
    pub request_burst: u32,
    pub sse_per_ip: u32,
    pub ws_per_ip: u32,
    /// Global connection cap; 0 derives it from `RLIMIT_NOFILE`.
    pub max_connections: usize,
    pub header_timeout_ms: u64,
    /// Queued bytes that make no write progress for this long close the
    /// connection (the peer stopped reading).
    pub write_timeout_ms: u64,
    /// An idle keep-alive connection is closed after this long.
    pub keepalive_timeout_ms: u64,
    /// Plain HTTP connections (not streams) per client IP.
    pub http_per_ip: u32,
    /// New channels (names nobody here listens to) a client IP may
    /// subscribe to per minute; 0 turns the budget off.
    pub new_channels_per_min: u32,
    pub new_channel_burst: u32,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    /// Peers whose `X-Forwarded-For` is trusted for the client IP.
    pub trusted_proxies: Vec<IpAddr>,
    /// New jobs per client per minute (token bucket; 429 `rate_limited`
    /// past it); 0 turns it off. A client is its API key when it sends a
    /// valid one, else its IP; a client on this machine without a key is
    /// exempt, as from `requests_per_sec`.
    pub jobs_per_min: u32,
    pub job_burst: u32,
    /// Jobs a client may have in flight (queued or running); past it 429
    /// `too_many_jobs`. 0 turns the cap off.
    pub jobs_in_flight: u32,
    /// Publishes per second per client, counted like jobs (in practice per
    /// API key: no other remote client may publish); 0 (the default) turns
    /// it off.
    pub publishes_per_sec: u32,
    pub publish_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            requests_per_sec: DEFAULT_REQUESTS_PER_SEC,
            request_burst: DEFAULT_REQUEST_BURST,
            sse_per_ip: DEFAULT_SSE_PER_IP,
            ws_per_ip: DEFAULT_WS_PER_IP,
            max_connections: 0,
            header_timeout_ms: DEFAULT_HEADER_TIMEOUT_MS,
            write_timeout_ms: DEFAULT_WRITE_TIMEOUT_MS,
            keepalive_timeout_ms: DEFAULT_KEEPALIVE_TIMEOUT_MS,
            http_per_ip: DEFAULT_HTTP_PER_IP,
            new_channels_per_min: DEFAULT_NEW_CHANNELS_PER_MIN,
            new_channel_burst: DEFAULT_NEW_CHANNEL_BURST,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            trusted_proxies: Vec::new(),
            jobs_per_min: DEFAULT_JOBS_PER_MIN,
            job_burst: DEFAULT_JOB_BURST,
            jobs_in_flight: DEFAULT_JOBS_IN_FLIGHT,
            publishes_per_sec: DEFAULT_PUBLISHES_PER_SEC,
            publish_burst: DEFAULT_PUBLISH_BURST,
        }
    }
}
