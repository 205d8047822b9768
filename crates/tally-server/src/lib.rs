//! The host's network layer: a thin tokio loop around the sans-I/O [`HostSession`].
//!
//! For each connection: read one frame (length checked before anything is read into the
//! buffer), hand it to the session, make the resulting changes durable through the [`Store`]
//! (group-committed), sign, write the reply. Requests on one connection are handled one at a
//! time (backpressure); `accept` never waits for a slot: admission after it enforces a
//! per-source cap and, at the global cap, evicts the connection idle or slow the longest; every
//! frame has a whole-frame deadline and every write a timeout; shutdown stops accepting and lets
//! requests in flight finish.
//!
//! # Layout
//! - [`HostService`] (`service.rs`): session + store + clock; `handle(frame)`. The store
//!   counts inside its commit, so the service holds no counting state of its own.
//! - [`run`] (`listener.rs`): the accept loop and the frame loop.
//! - [`ServerConfig`]: limits and timeouts.

use std::time::Duration;

use tally_store::StoreError;
use thiserror::Error;

mod clock;
mod listener;
mod service;

pub use clock::{ClockStatus, ClockWatch};
pub use listener::{run, run_admitted, run_rebindable};
pub use service::{DEFAULT_COMMIT_TIMEOUT, Handled, HostService, REQUEST_LOG_TARGET, Summary};
pub use tally_net::{Admission, AdmissionLimits};
pub use tally_store::PoolCount;

/// R27: the event id logged for each activation request.
pub const EVENT_ACTIVATION_REQUEST: u32 = 12290;

/// Server errors.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The store failed at start.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A socket operation failed.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
}

/// Default [`ServerConfig::max_connections_per_source`]: far above what one machine's clients
/// need (one connection per activation), far below `max_connections`, and above `tally bench`'s
/// default concurrency (64) from one address. A bench with more concurrency, or a site with
/// many clients behind one NAT address, needs a higher cap.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 128;

/// Limits and timeouts.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Connections open at once. When a new client arrives at the cap, the connection idle or
    /// slow the longest is closed to make room (see [`tally_net::admission`]); one whose request
    /// is being handled never is.
    pub max_connections: usize,
    /// Connections open at once from one source IP address (loopback is not exempt); a
    /// connection over it is closed as soon as it is accepted.
    pub max_connections_per_source: usize,
    /// Time allowed to receive a whole frame from its first byte (one deadline per frame, not
    /// per read).
    pub read_timeout: Duration,
    /// Time a connection may sit idle before (or between) requests.
    pub idle_timeout: Duration,
    /// Time allowed to write a reply.
    pub write_timeout: Duration,
    /// How often the host logs the summary of the activation requests it answered.
    pub summary_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            summary_interval: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests;
