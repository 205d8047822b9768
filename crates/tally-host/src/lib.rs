//! The Tally host runtime as a library: everything `tally host` does, so that a program runs a
//! host in a few lines and the binary only parses arguments and prints.
//!
//! ```no_run
//! # async fn run() -> Result<(), tally_host::HostError> {
//! use tally_host::config::{HostConfig, Overrides};
//! use tokio_util::sync::CancellationToken;
//!
//! let config = HostConfig::load(None, Overrides { dev: true, ..Overrides::default() })?;
//! let shutdown = CancellationToken::new();
//! let host = tally_host::Host::start(config, shutdown.clone()).await?;
//! println!("listening on {}", host.addr());
//! // ... later, e.g. on SIGTERM:
//! shutdown.cancel();
//! host.wait().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`config`]: the config file, flag overrides, and the merged [`HostConfig`].
//! - [`demo`]: `tally demo`: a dev host and clients over loopback (R3, R4).
//! - [`runtime`]: [`Host::start`] / [`Host::wait`]: the listener, admin API and background
//!   tasks under one shutdown token; [`runtime::build_service`].
//! - [`live`]: live settings (R26) behind the admin API's `HostControl` seam.
//! - [`admin`]: the admin API listener, its token, the metrics recorder.
//! - [`dns`]: the DNS publish loop (R17, R18).
//! - [`catalog`]: which catalog is in force ([`catalog::resolve`]), import and watch (R24).
//! - [`rollover`]: root rollover statements the host accepted; its anchor (X8).
//! - [`retention`]: event and registry pruning (R27), only on a trusted clock (X5).
//! - [`clock`]: the host's clock check (X5): event 1007, the trusted mark, future stamps.
//! - [`identity`]: key pair, certificate, host key (R22), dev bootstrap.
//! - [`activation`]: activating the host key with the authority, online or offline (R22).
//! - [`store`]: the two ways to open the database (read-only; the single writer).
//! - [`migrate`]: moving a single host's embedded data into a fleet database.
//! - [`remember`]: the database a data directory remembers (flag › config › remembered).
//! - [`query`]: what offline commands read (status, report, events, clients, backup).
//! - [`events`]: the host's own event ids and recording.
//! - [`priority`]: the process priority (R26).
//! - [`paths`]: the data directory's layout.

pub mod activation;
pub mod admin;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod demo;
pub mod dns;
mod error;
pub mod events;
pub mod identity;
pub mod live;
pub mod lock;
pub mod log_proof;
pub mod migrate;
pub mod paths;
pub mod priority;
pub mod query;
pub mod remember;
pub mod retention;
pub mod revocations;
pub mod rollover;
pub mod runtime;
pub mod store;

pub use config::HostConfig;
pub use error::HostError;
pub use runtime::Host;
