//! Decode arbitrary bytes; whatever decodes must round-trip (`cargo +nightly fuzz run message`). The body lives in the library.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_proto::fuzzing::fuzz_message(data));
