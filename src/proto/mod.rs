//! Protocol cores: pure functions over byte buffers. Nothing here touches a
//! socket or reads the clock, so every rule is tested on its own.

pub mod deflate;
pub mod gzip;
pub mod http;
pub mod resp;
pub mod sse;
pub mod ws;
