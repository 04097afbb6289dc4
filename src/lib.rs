//! redix: a real-time fan-out gateway for SSE and WebSocket clients.
//!
//! ```text
//!   clients ──► reactor 0 ─┐   each reactor: own Poll + SO_REUSEPORT listener,
//!   clients ──► reactor 1 ─┤   Slab<Conn>, local topic index, timer wheel,
//!   clients ──► reactor N ─┘   per-connection bounded write queues
//!                  │  ▲
//!   POST /api/publish (on any reactor)
//!                  ▼  │ Arc<Event> (encoded once) over a bounded crossbeam
//!                 Hub ┘ channel + mio::Waker, to reactors with subscribers
//!
//!   signal thread ── SIGTERM/SIGINT ──► shutting_down flag + wake every reactor
//!
//!   Redis mode: POST /api/publish ──► command thread ──► publish.lua (stream + PUBLISH)
//!               Redis pub/sub ──► pub/sub thread ──► Hub (as above), on every node
//! ```
//!
//! Where a byte enters and leaves: `reactor` accepts and polls, `conn` owns
//! one socket's state and write queue, `proto` turns bytes into requests
//! and events into bytes (no sockets, no clock), `api` routes requests,
//! `hub` assigns ids and hands events to reactors, `bridge` talks to Redis
//! in Redis mode, `limits`/`auth` decide
//! who may do what, `metrics`/`diag` report.

pub mod api;
pub mod auth;
pub mod bridge;
pub mod clock;
pub mod config;
pub mod conn;
pub mod diag;
pub mod event;
pub mod health;
pub mod hub;
pub mod limits;
pub mod link;
pub mod mailbox;
pub mod metrics;
pub mod proto;
pub mod reactor;
pub mod server;
pub mod state;
