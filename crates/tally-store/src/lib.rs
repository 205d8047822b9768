//! Tally's storage: one [`Store`] trait, backends behind features.
//!
//! The trait speaks only domain types (`tally-core`); no backend type leaks through it, so an
//! async, networked backend (PostgreSQL) fits behind the same trait as the embedded default.
//!
//! # Layout
//! - [`Store`]: what the host needs from storage.
//! - [`sqlite`]: the embedded backend: WAL, one writer thread doing group commit.
//! - `to_fleet`: moving a single host's SQLite data into a fleet database (`tally host migrate`).
//! - [`fsmode`], [`migrate`], `pg`, `pg_tls`, [`remembered`]: re-exported from `tally-db`, the
//!   database plumbing this crate shares with the authority ([`DbError`] converts into
//!   [`StoreError`] variant for variant).
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

pub mod event_cap;
mod group_commit;
mod health;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod replication;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod ticket;
#[cfg(all(feature = "sqlite", feature = "postgres"))]
pub mod to_fleet;

// The database plumbing lives in `tally-db` (shared with the authority, which does not depend on
// this crate); re-exported under its old paths so that `tally_store::fsmode` & co. keep working.
pub use tally_db::DbError;
pub use tally_db::{fsmode, migrate, remembered};
#[cfg(feature = "postgres")]
pub use tally_db::{pg, pg_tls};

pub use event_cap::{DEFAULT_EVENT_CAP, EVENT_EVENTS_AT_CAP, EventCapStatus};
pub use health::SETTLE as HEALTH_SETTLE;
pub use replication::Replication;
pub use ticket::SETTLE;

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
    /// The connection was lost (or its reply did not come) after `COMMIT` was sent, and the
    /// batch's token could not be checked on a new connection: the transaction may or may not
    /// have committed. The client gets no answer (never a wrong one); its retry renews the same
    /// entry (R4), so nothing is counted twice.
    #[error(
        "the outcome of a commit is unknown ({detail}); the client is not answered and its retry counts nothing twice"
    )]
    OutcomeUnknown {
        /// What was lost.
        detail: String,
    },
    /// A pool's lock was held by another session for longer than the limit: a host of the fleet
    /// stalled or died while holding it.
    #[error(
        "waited more than {seconds} s for a pool's lock held by another session (a host of the fleet stalled or died holding it; PostgreSQL ends such a session after {idle} s)"
    )]
    LockWait {
        /// The limit (`lock_timeout`).
        seconds: f64,
        /// `idle_in_transaction_session_timeout`, in seconds.
        idle: f64,
    },
    /// The database's replication keeps commits from completing, or is not what the host was
    /// told to require (`require_sync_replication`).
    #[error("database replication: {detail}")]
    Replication {
        /// What is wrong and what to do.
        detail: String,
    },
    /// The database file cannot be written by this process.
    #[error(
        "database {path} is read-only for this process; give the host's user write access to the file and its directory (chown/chmod), then start again"
    )]
    NotWritable {
        /// The database.
        path: String,
    },
    /// The database failed its integrity check.
    #[error(
        "database {path} is damaged ({detail}); stop the host and run `tally host check`, then restore the latest backup (see OPERATIONS.md)"
    )]
    Corrupt {
        /// The database.
        path: String,
        /// What SQLite reported.
        detail: String,
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

impl From<DbError> for StoreError {
    /// The plumbing's three failures are the store's own of the same name, so callers match one
    /// error type whichever layer failed.
    fn from(e: DbError) -> Self {
        match e {
            DbError::Open { path, source } => Self::Open { path, source },
            DbError::Backend { operation, source } => Self::Backend { operation, source },
            DbError::TooNew { found, supported } => Self::TooNew { found, supported },
            // `DbError` is non-exhaustive: a failure it grows later is carried as it is.
            other => Self::Backend {
                operation: "database",
                source: Arc::new(other),
            },
        }
    }
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
    /// X6: how often another installation presented this CMID (a copied disk image or VM not
    /// generalized); 0 for one installation.
    pub clones: u32,
}

/// The moments that sort the registry into states for [`Store::registry_census`]. Each is a
/// strict bound: a time equal to it is on the recent side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CensusCutoffs {
    /// An activated machine last seen before this has run out of validity (R7): expired.
    pub validity_before: Timestamp,
    /// An activated machine last seen before this, and not expired, is overdue for renewal.
    pub renewal_before: Timestamp,
    /// A machine not activated, first seen before this, has run out of grace (R10): expired.
    pub grace_before: Timestamp,
}

impl CensusRow {
    /// Counts one machine into its state (the rule the PostgreSQL query writes in SQL).
    pub fn add(&mut self, cut: &CensusCutoffs, activated: bool, first: Timestamp, last: Timestamp) {
        self.machines += 1;
        let bucket = if activated {
            if last < cut.validity_before {
                &mut self.expired
            } else if last < cut.renewal_before {
                &mut self.renewal_overdue
            } else {
                &mut self.activated
            }
        } else if first < cut.grace_before {
            &mut self.expired
        } else {
            &mut self.in_grace
        };
        *bucket += 1;
    }
}

/// One edition's (and pool's) machines in the registry, by state: each machine is in exactly
/// one of `activated`, `renewal_overdue`, `expired` and `in_grace`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CensusRow {
    /// The edition last requested.
    pub sku: Uuid,
    /// The pool last named.
    pub pool: Uuid,
    /// All of them.
    pub machines: u64,
    /// Activated and renewing on time.
    pub activated: u64,
    /// Activated, last seen before [`CensusCutoffs::renewal_before`], not expired.
    pub renewal_overdue: u64,
    /// Activated and past validity, or never activated and past grace.
    pub expired: u64,
    /// Not activated (the count is below the threshold), still in grace.
    pub in_grace: u64,
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
    /// Only machines whose name starts with this text (case-insensitive; ASCII case folding in
    /// SQLite, Unicode lower case in PostgreSQL).
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

/// Refused requests of one day, edition and result (issue 12: refusals are aggregated, not
/// stored one row per machine).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefusalCount {
    /// Unix day (UTC).
    pub day: i64,
    /// The edition asked for; the nil UUID for editions the host does not know.
    pub sku: Uuid,
    /// The result code given.
    pub result: u32,
    /// How many such requests that day.
    pub requests: u64,
    /// The latest one.
    pub last_at: Timestamp,
}

/// Limits every backend enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most machines in the registry (R6). At the cap, new machines are still counted and
    /// answered but not added to the registry; event 1005 is logged once and
    /// [`Store::registry_full`] says so. Retention ([`Store::prune_registry`]) makes room.
    pub registry_cap: u64,
    /// Most rows in the event log (R27, issue 21), besides retention: over it the oldest events
    /// are deleted in bounded steps by the writer, event 1011 is logged once and
    /// [`Store::event_cap`] says so ([`event_cap`] has the details).
    pub event_cap: u64,
    /// Whose clock a commit counts on (X5). Only a store with a clock of its own (PostgreSQL)
    /// can use [`TimeSource::Database`]; SQLite always counts on the caller's time.
    pub time: TimeSource,
    /// Refuse to open a fleet store unless its database replicates commits synchronously to a
    /// standby that is in sync (`require_sync_replication`; ignored by the embedded store).
    pub require_sync_replication: bool,
}

/// Whose clock a commit counts, expires (R4) and stamps on (X5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeSource {
    /// The database's clock, read once in each batch's transaction, replaces the request's
    /// time: every host of a fleet counts on one clock, so no host's clock can expire or
    /// immortalise another's entries. The default.
    #[default]
    Database,
    /// The time in each request (tests that drive time by hand).
    Caller,
}

/// What a store knows about the time (X5), for `tally_core::clock::assess`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClockEvidence {
    /// The database's clock (PostgreSQL); `None` for an embedded store.
    pub database_now: Option<Timestamp>,
    /// The last time a check trusted the clock ([`Store::trust_clock`]).
    pub trusted_mark: Option<Timestamp>,
    /// The newest time stored: table entries, registry, events.
    pub newest_stored: Option<Timestamp>,
}

/// Default [`StoreOptions::registry_cap`]: ten million machines (about 1.5 GB of SQLite).
pub const DEFAULT_REGISTRY_CAP: u64 = 10_000_000;

/// Event id logged once when the registry reaches its cap.
pub const EVENT_REGISTRY_FULL: u32 = 1005;

/// A request for the bench edition (`tally_core::bench`): an activation request's event row
/// (same fields as 12290) for a synthetic machine of `tally bench`.
pub const EVENT_BENCH_REQUEST: u32 = 1006;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            registry_cap: DEFAULT_REGISTRY_CAP,
            event_cap: DEFAULT_EVENT_CAP,
            time: TimeSource::default(),
            require_sync_replication: false,
        }
    }
}

/// The aggregate key of a refused request: its day, the edition (nil when the host does not
/// know it, so a requester cannot choose keys) and the result.
pub(crate) fn refusal_key(changes: &Changes) -> (i64, Uuid, u32) {
    let r = &changes.registry;
    let sku = if r.result == tally_proto::ResultCode::UNKNOWN_EDITION {
        Uuid::nil()
    } else {
        r.sku
    };
    (
        r.seen_at.millis().div_euclid(tally_core::time::DAY_MS),
        sku,
        r.result.0,
    )
}

/// The event logged when the registry reaches its cap.
/// Event id: another installation presented a CMID (X6; the registry row counts it in `clones`).
pub const EVENT_CLONE_DETECTED: u32 = 1009;

/// The event for a clone of `changes`' CMID: the request's sequence, the stored one, the
/// hardware digests and what the host did (counted apart or once).
pub(crate) fn clone_event(changes: &Changes, stored: u32, stored_digest: Option<[u8; 8]>) -> Event {
    let r = &changes.registry;
    let (sequence, digest) = r
        .installation
        .map_or((0, [0; 8]), |i| (i.sequence, i.hardware_digest));
    let apart = changes.clone_policy == tally_core::clones::ClonePolicy::Apart;
    Event {
        at: r.seen_at,
        event_id: EVENT_CLONE_DETECTED,
        level: "warning".into(),
        message: format!(
            "clone detected: CMID {} ({}) is presented by another installation (a copied disk image or VM not generalized); {}",
            r.cmid,
            r.machine_name,
            if apart {
                "the copy was told to take a new CMID and is counted apart"
            } else {
                "counted once (clones = \"once\")"
            }
        ),
        data: serde_json::json!({
            "cmid": r.cmid,
            "machine": r.machine_name,
            "sequence": sequence,
            "stored_sequence": stored,
            "hardware_digest": tally_core::hex::to_hex(&digest),
            "stored_hardware_digest": stored_digest.map(|d| tally_core::hex::to_hex(&d)),
            "policy": if apart { "apart" } else { "once" },
            "peer": r.peer,
        }),
    }
}

pub(crate) fn registry_full_event(at: Timestamp, cap: u64) -> Event {
    Event {
        at,
        event_id: EVENT_REGISTRY_FULL,
        level: "warning".into(),
        message: format!(
            "the registry holds {cap} machines, its cap: new machines are counted and answered but not registered; raise registry_cap or shorten registry_retention_days"
        ),
        data: serde_json::json!({ "cap": cap }),
    }
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
    /// 12290; a refusal only adds to its day's [`RefusalCount`]). Returns once they are (see the durability contract in the crate docs) with the
    /// count committed; on `Err` nothing of the request was stored or counted.
    async fn commit(&self, changes: Changes) -> Result<Counted, StoreError>;

    /// As [`Store::commit`], for a request that waits at most `budget` for its commit to
    /// *start*: if the writer has not taken the request into a transaction by then, it never
    /// will, and the answer is [`StoreError::Timeout`] (nothing stored, nothing counted). Once
    /// taken, the answer is the transaction's outcome, within [`SETTLE`] after the budget, or
    /// [`StoreError::OutcomeUnknown`]. So what the client is told, the registry and the event
    /// log agree. Both backends implement it; the default (for test doubles) only times out.
    async fn commit_within(
        &self,
        changes: Changes,
        budget: std::time::Duration,
    ) -> Result<Counted, StoreError> {
        tokio::time::timeout(budget, self.commit(changes))
            .await
            .unwrap_or(Err(StoreError::Timeout {
                seconds: budget.as_secs_f64(),
            }))
    }

    /// A page of the registry.
    async fn registry(&self, page: RegistryPage) -> Result<Vec<RegistryEntry>, StoreError>;

    /// One client's registry entry.
    async fn registry_entry(&self, cmid: Uuid) -> Result<Option<RegistryEntry>, StoreError>;

    /// Number of clients in the registry (matching `search` when given).
    async fn registry_len(&self) -> Result<u64, StoreError>;

    /// Number of clients whose machine name starts with `search` (all clients for `None`).
    async fn registry_count(&self, search: Option<String>) -> Result<u64, StoreError>;

    /// The clients seen in `[from, to)` (last seen at or after `from`, first seen before `to`),
    /// in CMID order after `after`, at most `limit`: a keyset page, so reading a whole period
    /// (a compliance report, R6) is one pass over the registry at any size.
    async fn registry_in_period(
        &self,
        from: Timestamp,
        to: Timestamp,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<RegistryEntry>, StoreError>;

    /// The registry counted by edition and state at `cutoffs`, in one pass where the rows are
    /// (PostgreSQL: one aggregate query; SQLite: one scan counted in the reader), without
    /// returning a row: what the dashboard shows at any registry size. Ordered by SKU, pool.
    async fn registry_census(&self, cutoffs: CensusCutoffs) -> Result<Vec<CensusRow>, StoreError>;

    /// Appends events to the log (durable when it returns, like [`Store::commit`]).
    async fn record_events(&self, events: Vec<Event>) -> Result<(), StoreError>;

    /// Events matching `query`, newest first.
    async fn events(&self, query: EventQuery) -> Result<Vec<Event>, StoreError>;

    /// Deletes events older than `before`; returns how many (the retention setting).
    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// Refused requests per day, edition and result, from `since` on, newest day first.
    async fn refusals(&self, since: Timestamp) -> Result<Vec<RefusalCount>, StoreError>;

    /// Removes machines not seen since `before` from the registry (retention); returns how
    /// many. Never touches the counting tables.
    async fn prune_registry(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// What the store knows about the time: its own clock (PostgreSQL), the trusted mark and the
    /// newest time stored (X5).
    async fn clock_evidence(&self) -> Result<ClockEvidence, StoreError>;

    /// Records that a check trusted the clock at `at` (the mark never moves back), and pulls
    /// every table entry (R4) and registry `last_seen` stamped beyond `at` +
    /// `tally_core::clock::CLOCK_TOLERANCE_MS` back to `at`; returns how many rows it pulled back.
    /// Call it only on a clock `tally_core::clock::assess` found nothing against (X5).
    async fn trust_clock(&self, at: Timestamp) -> Result<u64, StoreError>;

    /// Whether the registry reached its cap (see [`StoreOptions::registry_cap`]).
    fn registry_full(&self) -> bool {
        false
    }

    /// The event log's cap and whether it is reached (see [`StoreOptions::event_cap`]).
    fn event_cap(&self) -> EventCapStatus {
        EventCapStatus::default()
    }

    /// Why the last commit failed, while the store is failing (`None` once a commit succeeds
    /// again): for `/metrics`, the dashboard and status.
    fn storage_error(&self) -> Option<String> {
        None
    }

    /// The database's replication as last checked (a fleet's PostgreSQL; `None` for an embedded
    /// store or before the first check): whether an acknowledged commit survives a failover.
    fn replication(&self) -> Option<Replication> {
        None
    }
}

/// A registry search's bounds: names from `lo` (inclusive) to `hi` (exclusive) are those that
/// start with the search text, in a byte order where U+10FFFF sorts after every other character
/// (SQLite's NOCASE, PostgreSQL's "C" collation on `lower()`). `(None, None)`: no search. An
/// empty search is no search.
pub(crate) fn prefix_bounds(search: Option<&str>) -> (Option<String>, Option<String>) {
    match search {
        Some(s) if !s.is_empty() => (Some(s.to_owned()), Some(format!("{s}\u{10FFFF}"))),
        _ => (None, None),
    }
}

/// R27: the 12290 event of an activation request, as every backend writes it; a request for the
/// bench edition is the same row under [`EVENT_BENCH_REQUEST`], so that no dashboard series or
/// `events --id 12290` counts synthetic machines.
pub(crate) fn activation_event(changes: &Changes) -> Event {
    let r = &changes.registry;
    Event {
        at: r.seen_at,
        event_id: if tally_core::bench::is_bench_pool(r.pool) {
            EVENT_BENCH_REQUEST
        } else {
            12290
        },
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
