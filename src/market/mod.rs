//! The market upstream: trades from a Finnhub-protocol WebSocket, one
//! upstream subscription per symbol however many clients want it, fanned
//! out on `trades:SYM` through the hub.
//!
//! `upstream` is the bridge thread that holds the connection.

pub mod upstream;
