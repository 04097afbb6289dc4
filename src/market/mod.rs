//! The market upstream: where trade data comes from before the (coming)
//! market bridge fans it out as `trades:*` hub events; `sim` is a local
//! Finnhub-protocol simulator that tests, benchmarks and the embedded
//! default use in place of the real provider.

pub mod sim;
