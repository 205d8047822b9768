//! Integration tests of the `tally` binary: real processes over real TCP on loopback.
//! One test binary for the crate (ripgrep/hickory style); modules by theme.

// Test code: a failed expectation is a test failure, which is what `expect` reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod admin_day;
mod admin_reports;
mod authority;
mod authority_catalog;
mod authority_pg;
mod bench;
mod cli;
mod client_clock;
mod clock;
mod dist;
mod dns;
mod embedding;
mod embedding_api;
mod faults;
mod fleet;
mod fleet_admin;
mod fleet_doc;
mod fleet_faults;
mod fleet_tls;
mod hostile;
mod hostile_v6;
mod hsm;
mod lifecycle;
mod local_users;
mod one_path;
mod packages;
mod readme;
mod revocation;
mod rollover;
mod rules;
mod sdk;
mod startup;
mod transparency;
mod trust;

use std::path::Path;

/// An HTTP client (with the process's TLS provider installed first, as the binary does).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Tests whose checks need the machine's CPU (a flood answered within 2 s, a crowd of 1,100
/// connections) and tests that compile (cargo, a C compiler, a Python wheel) hold this lock, so
/// neither kind runs beside the other on CI's 2 cores.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `tally` binary built for these tests.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tally"))
}
