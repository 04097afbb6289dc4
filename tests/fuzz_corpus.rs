//! Replays every committed fuzz corpus (`fuzz/corpus/<target>/`) through the
//! same checks the libFuzzer targets run (`fuzz/checks.rs`), on stable and
//! without libFuzzer, so `cargo test` guards what fuzzing found. A missing
//! or empty corpus directory fails: this test must never pass by testing
//! nothing.

use std::fs;
use std::panic;
use std::path::{Path, PathBuf};

#[path = "../fuzz/checks.rs"]
mod checks;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The corpus files of `target`, sorted; panics when there are none.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let entries =
        fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

/// Runs `check` on every file of the corpus and names each file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let mut failed = Vec::new();
    let files = corpus(target);
    for file in &files {
        let data = fs::read(file).expect("a readable corpus file");
        if panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target}: failing inputs {failed:#?}");
    eprintln!("{target}: {} inputs replayed", files.len());
}

#[test]
fn every_target_has_a_corpus_and_it_passes() {
    for (target, check) in checks::TARGETS {
        replay(target, check);
    }
}
