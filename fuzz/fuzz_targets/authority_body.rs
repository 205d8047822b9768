//! The authority API's request bodies (JSON) (`cargo +nightly fuzz run authority_body`). The body lives in the library.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_authority::fuzzing::fuzz_authority_body(data));
