//! The market upstream: trades from a Finnhub-protocol WebSocket, one
//! upstream subscription per symbol however many clients want it, fanned
//! out on `trades:SYM` through the hub.
//!
//! - `upstream` is the bridge thread that holds the connection;
//! - `connect` opens it: TCP, TLS (rustls) for `wss://`, the handshake;
//! - `lease` keeps it to one connection per cluster in Redis mode;
//! - `republish` puts the lease holder's trades into Redis, fenced;
//! - `sim` is a local Finnhub-protocol simulator that tests and benchmarks
//!   use in place of the real provider.

pub mod connect;
pub mod lease;
pub mod republish;
pub mod sim;
pub mod upstream;
