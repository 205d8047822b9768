//! Offline IDs (digit groups); decodable input must round-trip (`cargo +nightly fuzz run digits`). The body lives in the library.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_core::fuzzing::fuzz_digits(data));
