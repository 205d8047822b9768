//! A signed catalog (R24) (`cargo +nightly fuzz run signed_catalog`). The body lives in the library.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_core::fuzzing::fuzz_signed_catalog(data));
