//! Tally's client library: what the vendor's software uses to license an installation.
//!
//! Most applications need only [`Licensing`]: `status()` ("licensed? days left?") and
//! `activate()`, answered by the local agent when it runs and from the state directory when it
//! does not. Underneath, [`Connector::activate`] sends one activation request over TCP and
//! verifies the response's chain to the trusted authority key, its nonce and signature over the
//! exact request sent, and that the host's key group covers the edition (R16, R21), then
//! applies R2: activated when the count reaches the edition's threshold.
//!
//! # Layout
//! - [`agent`]: the agent socket protocol and [`Licensing`].
//! - [`ops`]: operations on a state directory ([`ops::Client`]), shared by agent and CLI.
//! - [`authority`]: the HTTP client to the vendor's authority (host and MAK activation).
//! - [`connect`]: the [`Connector`] and the wire exchange.
//! - [`state`]: the locked, atomically written state file.
//! - [`evidence`]: the hosts' signed answers kept in it (X5).
//! - `revoked`: what the authority's revocation list changes for a client (X7).
//! - [`fsmode`]: file and directory modes set explicitly, never from the umask (X4).
//! - [`hardware`]: the hardware fingerprint (R12), probed by the platform.
//! - [`platform`]: what the client needs from the operating system (hardware probe, machine
//!   name, agent transport); Linux only, anything else fails to compile with what a port needs.
//! - [`rollover`]: root rollover statements the client accepted (X8).
//! - [`codes`]: client-side result codes (R14).

pub mod agent;
pub mod authority;
pub mod codes;
pub mod connect;
pub mod evidence;
/// File and directory modes (X4): the one module every side uses, re-exported from tally-db.
pub use tally_db::fsmode;
pub mod hardware;
pub mod ops;
pub mod platform;
mod revoked;
pub mod rollover;
pub mod state;

pub use agent::Licensing;
pub use connect::{ActivationParams, Answer, ClientError, Connector};
pub use ops::{OpResult, StatusReport};
pub use state::{ClientState, StateError};
pub use tally_core::lifecycle::LicenseStatus;
