#![no_main]

use libfuzzer_sys::fuzz_target;

// Shared with tests/fuzz_corpus.rs; this target uses one of its checks.
#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::cursor_ws_json(data));
