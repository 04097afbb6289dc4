//! Integration-test support: the real `redix` binary on port 0 and real
//! peers for it, each in the module named after its job:
//!
//! - [`server`]: the process harness ([`Server`], [`wait_until`], [`DEADLINE`]);
//! - [`http`]: requests, keep-alive connections, publishing, metrics;
//! - [`sse`]: the SSE client; [`ws`]: WebSocket clients;
//! - [`jobs`]: summarize requests and job streams read to their end;
//! - [`redis`]: `redis-server`s and Redis-mode nodes; [`fake_redis`]: a
//!   fake Redis for faults the real one will not produce on demand;
//! - [`market`]: WebSocket clients of `trades:*`;
//! - [`churn`]: clients that drop and resume, and the check of what they got;
//! - [`cluster`]: a real Redis Cluster, its channels per shard, nodes on it.
//!
//! Test files `use common::*;` and need not know the layout.

// Each test binary uses a subset of the helpers; the rest is not dead.
#[allow(dead_code)]
mod churn;
#[allow(dead_code)]
mod cluster;
#[allow(dead_code)]
pub mod fake_redis;
#[allow(dead_code)]
mod http;
#[allow(dead_code)]
mod jobs;
#[allow(dead_code)]
mod market;
#[allow(dead_code)]
mod redis;
#[allow(dead_code)]
mod server;
#[allow(dead_code)]
mod sse;
#[allow(dead_code)]
mod ws;

// Likewise, a test binary that needs no WebSocket client leaves `ws::*` unused.
#[allow(unused_imports)]
pub use {churn::*, cluster::*, http::*, jobs::*, market::*, redis::*, server::*, sse::*, ws::*};
