//! A catalog file (TOML) (`cargo +nightly fuzz run catalog`). The body lives in the library.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_core::fuzzing::fuzz_catalog(data));
