//! Replays every input kept in `fuzz/regressions/<target>/` (crashes once found, and seeds)
//! through the same entry points the fuzz targets call, on stable Rust in `cargo test`.

// Test code: a failed expectation is a test failure.
#![allow(clippy::expect_used)]

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        f(&data);
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}

#[test]
fn message_regressions() {
    replay("message", tally_proto::fuzzing::fuzz_message);
}

#[test]
fn catalog_regressions() {
    replay("catalog", tally_core::fuzzing::fuzz_catalog);
}

#[test]
fn signed_catalog_regressions() {
    replay("signed_catalog", tally_core::fuzzing::fuzz_signed_catalog);
}

#[test]
fn signed_files_regressions() {
    replay("signed_files", tally_core::fuzzing::fuzz_signed_files);
}

#[test]
fn digits_regressions() {
    replay("digits", tally_core::fuzzing::fuzz_digits);
}
