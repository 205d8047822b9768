//! Tally's client library: what the vendor's software uses to activate against a host.
//!
//! [`Connector::activate`] sends one activation request over TCP, verifies the response's
//! chain to the trusted authority key, its nonce and signature over the exact request sent, and
//! that the host's key group covers the edition (R16, R21), then applies R2: activated when the
//! count reaches the edition's threshold.
//!
//! # Layout
//! - [`connect`]: the [`Connector`] and the wire exchange.
//! - [`state`]: the client's persistent state file.

pub mod connect;
pub mod state;

pub use connect::{ActivationParams, Answer, ClientError, Connector};
pub use state::{ClientState, LicenseStatus, StateError};
