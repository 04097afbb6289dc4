//! Bytes on the wire per event and the cost of resume; see BENCHMARKS.md.
fn main() {}
