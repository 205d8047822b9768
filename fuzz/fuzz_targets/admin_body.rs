//! The admin API's settings body (JSON) (`cargo +nightly fuzz run admin_body`). The body lives in the library.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tally_admin::fuzzing::fuzz_admin_body(data));
