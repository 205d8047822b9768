//! Connection limits shared by Tally's listeners: the activation port (`tally-server`), the
//! host's admin API (`tally-admin`) and the authority's HTTP API (`tally-authority`).
//!
//! It is its own crate because those three must share it without depending on each other:
//! `tally-admin` depends on `tally-server`, `tally-server`'s tests depend on `tally-authority`,
//! and `tally-core`/`tally-proto` never import tokio. This crate depends on no Tally crate.
//!
//! # Layout
//! - [`admission`]: the registry of live connections: global cap with eviction of the idlest
//!   connection, per-source cap, rate-limited warnings.
//! - [`http`] (feature `http`): [`http::serve`], an axum router behind that admission, with
//!   concurrent TLS handshakes and header, request, idle and body limits.

pub mod admission;
#[cfg(feature = "http")]
pub mod http;

pub use admission::{Admission, AdmissionLimits, Phase, RateLimitedWarn, Refused, Ticket};
