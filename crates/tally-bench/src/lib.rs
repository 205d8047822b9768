//! Tally's benchmarks as a library, driven by `tally bench` (which only parses and prints).
//!
//! - [`load`]: a bounded load generator against one host or a fleet, and the raw-TCP
//!   baseline it is compared with in the same run ([`baseline`]).
//! - [`seed`]: a registry at scale in a new data directory, written through the store's
//!   writer, then the admin's queries timed on it.
//! - [`proc_stat`]: a process's CPU time and memory, from `/proc` (Linux).
//!
//! Loads are bounded in requests or time and stop by themselves; the CLI targets loopback or
//! hosts the user runs.

pub mod baseline;
pub mod load;
pub mod proc_stat;
pub mod seed;

/// What can go wrong in a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A `--host` argument that is not HOST:PORT.
    #[error("--host takes HOST:PORT (e.g. 127.0.0.1:1688), not a URL: {0}")]
    NotHostPort(String),
    /// A host name that does not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The name asked.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// A host name without an address.
    #[error("{0} has no address")]
    NoAddress(String),
    /// The concurrency asked is out of range.
    #[error("--concurrency must be between 1 and 4096 (got {0})")]
    Concurrency(usize),
    /// A SKU the demo catalog does not have.
    #[error("sku {0} is not in the demo catalog (tally catalog show lists its editions)")]
    UnknownSku(uuid::Uuid),
    /// The data directory already holds a database.
    #[error(
        "{0} already has a database: --seed-registry only fills a new data directory, so \
         synthetic machines never reach a real host's registry or reports; choose a new \
         directory"
    )]
    NotNew(String),
    /// A file system error, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A socket error (the baseline server's).
    #[error("{0}")]
    Net(#[from] std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] tally_store::StoreError),
    /// Histogram bounds or merging (a bug).
    #[error("histogram: {0}")]
    Histogram(String),
    /// A worker task panicked or was cancelled.
    #[error("a bench worker stopped: {0}")]
    Worker(String),
    /// The catalog has no edition the bench needs.
    #[error("the demo catalog has no {0} edition")]
    NoEdition(&'static str),
}
