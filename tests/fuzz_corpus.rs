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

/// Reproducers of known failures, kept out of the corpus so fuzzing and
/// the replay above can go on; each runs through the strict check.
fn regression(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target)
        .join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Found by the `resp` target: a length line over 32 bytes was accepted
/// when its CRLF was already buffered and refused when it arrived in
/// pieces. It is now refused however it arrives.
#[test]
fn resp_long_length_line_is_refused_however_it_arrives() {
    let data = regression("resp", "long-length-line");
    // `$` + 40 zeros + `1\r\nx\r\n`.
    let reply = &data[3..];
    assert!(redix::proto::resp::parse(reply, 1024).is_err());
    for cut in 0..reply.len() {
        let got = redix::proto::resp::parse(&reply[..cut], 1024);
        assert!(got.is_err() || got == Ok(None), "cut at {cut}: {got:?}");
    }
    checks::resp(&data);
    checks::resp(&regression(
        "resp",
        "crash-43bba940ee6d59d9b155a7b5c2f5f7626512d86e",
    ));
}
