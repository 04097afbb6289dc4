//! What both benches share: the redix process they start and its signals (`spawn`), `/proc`
//! sampling (`proc`), HTTP/1.1 text (`http`), the one WebSocket client (`ws`), number
//! formatting (`report`) and a minimal Redis client for checks (`resp`).
//!
//! `http`, `ws`, `report` and `resp` are leaf modules (std and external crates only), so
//! `tests/bench_self_test.rs` can include them by path.

// Each bench uses only part of each module below (load: nchan, box CPU, chunked publish
// answers; wire: peak RSS, rusage, Content-Length answers), hence the allows.
#[allow(dead_code)] // shared by load and wire; each uses part of it
pub mod http;
#[allow(dead_code)] // the load bench's generators
pub mod net;
#[allow(dead_code)] // shared by load and wire; each uses part of it
pub mod proc;
#[allow(dead_code)] // shared by load and wire; each uses part of it
pub mod report;
#[allow(dead_code)] // the publish bench's checks of the streams in Redis
pub mod resp;
#[allow(dead_code)] // shared by load and wire; each uses part of it
pub mod spawn;
#[allow(dead_code)] // shared by load and wire; each uses part of it
pub mod ws;
