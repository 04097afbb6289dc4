//! redix: a real-time fan-out gateway for SSE and WebSocket clients.
//!
//! Threads and the channels between them:
//!
//! ```text
//!  clients ─► reactor 0..N-1 (one mio Poll + SO_REUSEPORT listener each: Slab<Conn>,
//!             │   ▲            local topic index, timer wheel, bounded write queues)
//!             │   │ Mailbox = bounded crossbeam channel + mio::Waker, one per reactor;
//!             │   │ Msg::{Event, Retry, Reset, PublishReply, Admin, ..}, connections named by ConnRef
//!             │   │
//!  publish ──►├─► Hub (Arc, one Mutex): ids, history, dedupe; encodes each event once
//!  (embedded) │   └─► hands the same Arc<Event> to every reactor with subscribers (Outbox)
//!             │
//!  Redis mode ├─► link::Redis.submit(Command) ── bounded queues, try_send ──► command thread
//!             │      (publishes; history loads apart)   publishes (EVALSHA, pipelined), one
//!             │                                         pipeline of loads a turn, the canary
//!             │      └─► Msg::PublishReply to the reactor that asked
//!             │   pub/sub thread: SUBSCRIBEs the hub's wanted channels ◄── reader thread
//!             │      (socket → 64 MiB bounded chunk queue) ─► Hub.receive ─► reactors
//!             │      (Redis Cluster: SSUBSCRIBEs each channel on its slot's master, one
//!             │       link and reader thread per master; bridge/shards)
//!             │
//!  signals ───┴─► signal thread: SIGTERM drains (Health flag + wake every Mailbox), SIGHUP reloads
//!  watchdog thread: pings systemd while every reactor's Health stamp is fresh
//!  sampler thread: counts the process's fds once a second for /metrics/prom
//!
//!  market thread: one upstream WebSocket (Finnhub protocol; without market.url the
//!      in-process simulator, started at the first trades:* subscriber) ◄── Hub.market_interest
//!      (trades:* channels with subscribers) ─► Hub.publish on trades:SYM ─► reactors;
//!      errors for a channel's subscribers through Hub.channel_error ─► Msg::ChannelError.
//!      Redis mode: the node holding the market lease (market::lease) alone connects,
//!      subscribes every node's interest (shared in Redis) and republishes trades through
//!      the fenced publish script ─► Redis pub/sub ─► every node's hub like any channel
//!
//!  job engine thread ◄── Jobs.submit(Request) (bounded queue, try_send; breaker read first)
//!      ─► Msg::Job to the reactor that asked. Embedded: the jobs, the summary cache and the
//!      demo worker in that thread, events through Hub.publish on job:<id>. Redis mode
//!      (jobs::redis): FCALLs on its own connection (a queue stream per kind; workers anywhere
//!      publish events with one FCALL through the publish.lua path ─► pub/sub ─► every hub),
//!      plus a listener thread on <prefix>jobs:done for the requests parked on a job
//! ```
//!
//! Invariants a contributor must keep:
//! - **Who owns a socket**: a client socket belongs to the reactor that
//!   accepted it, for its whole life; no other thread touches it. Other
//!   threads name a connection by [`mailbox::ConnRef`] (reactor, slot,
//!   generation) and reach it only through that reactor's [`mailbox::Mailbox`].
//! - **Who may block**: nothing on a reactor, ever (no Redis call, no lock
//!   held across I/O; the hub's lock covers memory work only). Bridge
//!   threads may block on their own sockets; they hand work to reactors
//!   with `try_send` and count what a full inbox refuses.
//! - **What is bounded where**: each reactor's inbox ([`mailbox::INBOX_CAPACITY`]),
//!   each connection's write queue (`queue.max_events`/`max_bytes`; a plain
//!   HTTP connection stops being read while its unread answers exceed it),
//!   what one connection is read per turn (64 KiB), how long queued bytes
//!   may make no progress (`limits.write_timeout_ms`), request heads and
//!   bodies and idle keep-alives (`limits.*`), connections per IP (HTTP,
//!   SSE, WebSocket), connections per token subject and new channels per
//!   IP, history (`history.*`, with a
//!   global byte cap), the Redis queues (`redis.queue` each) and pub/sub
//!   backlog (64 MiB), the timer wheel (a few live entries per connection).
//! - **Layers**: `proto` (bytes ↔ messages) and `hub` never import `mio`,
//!   `std::net` or the clock; `event`, `mailbox`, `admin` (what operators
//!   ask reactors, as data), `clock` are leaves below the hub; `bridge` and `hub` import nothing from `reactor`; `state`
//!   imports nothing from `bridge`; files of `reactor/` share only
//!   `reactor/mod.rs`.
//!
//! Where a byte enters and leaves: `reactor` accepts and polls, `conn`
//! owns one socket's state and write queue, `proto` turns bytes into
//! requests and events into bytes, `api` decides what a request means,
//! `hub` assigns ids and hands events to reactors, `bridge` talks to Redis,
//! `market` holds the market upstream thread and `market::sim`, a Finnhub
//! simulator, `limits`/`auth`/`tokens` decide who may do what (API keys;
//! subscription tokens), `metrics`/`diag` report.

pub mod activation;
pub mod admin;
pub mod api;
pub mod auth;
pub mod bridge;
pub mod clock;
pub mod config;
pub mod conn;
pub mod diag;
pub mod doctor;
pub mod event;
pub mod health;
pub mod hub;
pub mod jobs;
pub mod limits;
pub mod link;
pub mod logging;
pub mod mailbox;
pub mod market;
pub mod metrics;
pub mod proto;
pub mod reactor;
pub mod server;
pub mod state;
pub mod tokens;
