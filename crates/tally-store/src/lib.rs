//! Tally's storage: one [`Store`] trait, backends behind features.
//!
//! The trait speaks only domain types (`tally-core`); no backend type leaks through it, so an
//! async, networked backend (PostgreSQL) fits behind the same trait as the embedded default.
//!
//! # Layout
//! - [`Store`]: what the host needs from storage.
//! - [`sqlite`]: the embedded backend: WAL, one writer thread doing group commit.
//!
//! **Durability contract:** when [`Store::commit`] returns `Ok`, the changes survive a crash of
//! the process (and, with the default `synchronous = FULL`, of the machine). Implementations
//! batch concurrent commits into one transaction so that durability does not cost one fsync
//! per request.

use std::error::Error as StdError;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use tally_core::counting::PoolSnapshot;
use tally_core::host::{Changes, Counted};
use tally_core::time::Timestamp;
use thiserror::Error;
use uuid::Uuid;

mod health;
pub mod migrate;
#[cfg(feature = "postgres")]
pub mod pg;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// A storage failure. Backend errors are carried as opaque sources.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened or migrated.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// What was being opened.
        path: String,
        /// Why it failed.
        source: Arc<dyn StdError + Send + Sync>,
    },
    /// A read or write failed.
    #[error("database {operation} failed: {source}")]
    Backend {
        /// What was being done.
        operation: &'static str,
        /// Why it failed.
        source: Arc<dyn StdError + Send + Sync>,
    },
    /// The database was written by a newer Tally.
    #[error(
        "database schema version {found} is newer than this Tally supports ({supported}); upgrade Tally"
    )]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// The store was closed.
    #[error("the store is shut down")]
    Closed,
    /// A commit did not complete in time (the database hangs or is unreachable).
    #[error("database did not answer within {seconds} s")]
    Timeout {
        /// The deadline.
        seconds: f64,
    },
    /// A write was asked of a store opened for reading only.
    #[error("database {path} is open for reading only; only the running host writes it")]
    ReadOnly {
        /// The database.
        path: String,
    },
    /// No database where one was expected.
    #[error("no database at {path}; start the host once (`tally host run`) to create it")]
    Missing {
        /// Where it was looked for.
        path: String,
    },
    /// The database needs a migration that only the running host may apply.
    #[error(
        "database {path} has schema version {found}, this Tally uses {supported}; start the host once (`tally host run`) to upgrade it"
    )]
    NeedsUpgrade {
        /// The database.
        path: String,
        /// Version in the file.
        found: i64,
        /// Version this build uses.
        supported: i64,
    },
}

/// One client in the registry (R6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegistryEntry {
    /// The client's CMID.
    pub cmid: Uuid,
    /// Its machine name, as last reported.
    pub machine_name: String,
    /// The edition last requested.
    pub sku: Uuid,
    /// The pool last named.
    pub pool: Uuid,
    /// First request.
    pub first_seen: Timestamp,
    /// Latest request.
    pub last_seen: Timestamp,
    /// Result code of the latest request.
    pub last_result: u32,
    /// Count given in the latest request.
    pub last_count: u32,
    /// Whether the latest count reached the edition's threshold.
    pub activated: bool,
    /// Requests served.
    pub requests: u64,
    /// The host that answered the latest request (fleet mode; `None` on a single host's SQLite).
    pub served_by: Option<String>,
}

/// One entry of the host's event log (R27).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Event {
    /// When.
    pub at: Timestamp,
    /// The event id: 12290 activation request, 12293/12294 DNS publishing, 1000+ Tally's own.
    pub event_id: u32,
    /// `info`, `warning` or `error`.
    pub level: String,
    /// A sentence for people.
    pub message: String,
    /// The event's fields (machine name, CMID, result, …).
    pub data: serde_json::Value,
}

/// Which events to return, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events at or after this time.
    pub since: Option<Timestamp>,
    /// Only events with this id.
    pub event_id: Option<u32>,
    /// At most this many.
    pub limit: u32,
}

/// A page of the registry.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RegistryPage {
    /// Rows to skip.
    pub offset: u64,
    /// Rows to return at most.
    pub limit: u32,
    /// Only machines whose name contains this text (case-insensitive).
    pub search: Option<String>,
    /// Order.
    pub sort: RegistrySort,
}

/// Registry orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RegistrySort {
    /// Most recently seen first.
    #[default]
    LastSeen,
    /// By machine name.
    Machine,
    /// Oldest first seen first.
    FirstSeen,
}

impl RegistrySort {
    /// Parses `last_seen`, `machine` or `first_seen`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "last_seen" => Some(Self::LastSeen),
            "machine" => Some(Self::Machine),
            "first_seen" => Some(Self::FirstSeen),
            _ => None,
        }
    }
}

/// One pool's live numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolCount {
    /// The pool.
    pub pool: Uuid,
    /// Live entries (R4).
    pub count: u32,
    /// Table capacity (R5).
    pub capacity: u32,
}

/// What a host needs from storage.
///
/// **Counting contract (R2–R5, X1):** [`Store::commit`] counts the request on the pool's table
/// *as stored*, inside the transaction that makes the change durable, with
/// [`tally_core::counting::CountTables::apply`], and returns that count. Requests are counted
/// in commit order; a failed commit counts nothing and leaves no trace; stores shared by several
/// hosts (PostgreSQL) serialise each pool across hosts, so the fleet counts as one host would.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every pool's table as stored.
    async fn load_tables(&self) -> Result<Vec<PoolSnapshot>, StoreError>;

    /// Every pool's live count at `now` (R4) and capacity (R5), as stored, ordered by pool.
    async fn pool_counts(&self, now: Timestamp) -> Result<Vec<PoolCount>, StoreError>;

    /// Counts one request and makes its changes durable (pool table, registry row, event
    /// 12290). Returns once they are (see the durability contract in the crate docs) with the
    /// count committed; on `Err` nothing of the request was stored or counted.
    async fn commit(&self, changes: Changes) -> Result<Counted, StoreError>;

    /// A page of the registry.
    async fn registry(&self, page: RegistryPage) -> Result<Vec<RegistryEntry>, StoreError>;

    /// One client's registry entry.
    async fn registry_entry(&self, cmid: Uuid) -> Result<Option<RegistryEntry>, StoreError>;

    /// Number of clients in the registry (matching `search` when given).
    async fn registry_len(&self) -> Result<u64, StoreError>;

    /// Number of clients whose machine name contains `search`.
    async fn registry_count(&self, search: Option<String>) -> Result<u64, StoreError>;

    /// Appends events to the log (durable when it returns, like [`Store::commit`]).
    async fn record_events(&self, events: Vec<Event>) -> Result<(), StoreError>;

    /// Events matching `query`, newest first.
    async fn events(&self, query: EventQuery) -> Result<Vec<Event>, StoreError>;

    /// Deletes events older than `before`; returns how many (the retention setting).
    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// Why the last commit failed, while the store is failing (`None` once a commit succeeds
    /// again): for `/metrics`, the dashboard and status.
    fn storage_error(&self) -> Option<String> {
        None
    }
}

/// R27: the 12290 event of an activation request, as every backend writes it.
pub(crate) fn activation_event(changes: &Changes) -> Event {
    let r = &changes.registry;
    Event {
        at: r.seen_at,
        event_id: 12290,
        level: "info".into(),
        message: format!("activation request from {}", r.machine_name),
        data: serde_json::json!({
            "machine": r.machine_name,
            "cmid": r.cmid,
            "sku": r.sku,
            "pool": r.pool,
            "result": r.result.name().unwrap_or("unknown"),
            "code": format!("0x{:08X}", r.result.0),
            "count": r.count,
            "activated": r.activated,
            "peer": r.peer,
        }),
    }
}
