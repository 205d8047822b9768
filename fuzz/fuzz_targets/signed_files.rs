//! Key and certificate files, product keys (`cargo +nightly fuzz run signed_files`). The body lives in the library.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_core::fuzzing::fuzz_signed_files(data));
