//! Tally's database plumbing, shared by the host's store (`tally-store`) and the authority's
//! store (`tally-authority`), so that neither depends on the other: `db ← {store, authority}`.
//!
//! # Layout
//! - [`fsmode`]: file and directory modes set explicitly, never from the umask (X4).
//! - [`migrate`]: the one schema migration runner (SQLite `user_version`, PostgreSQL
//!   `tally_schema` under an advisory lock).
//! - [`pg`]: PostgreSQL connection pools with bounded timeouts and server-side session limits,
//!   retries of serialization failures; [`pg_tls`]: libpq's `sslmode`/`sslrootcert` on rustls.
//! - [`remembered`]: the database a host or authority directory remembers (URL and 0600 password).
//!
//! Errors are [`DbError`]; each store's own error converts from it (the host's
//! `tally_store::StoreError` variant for variant, the authority's as its `Database` case).

use std::error::Error as StdError;
use std::sync::Arc;

use thiserror::Error;

pub mod fsmode;
pub mod migrate;
#[cfg(feature = "postgres")]
pub mod pg;
#[cfg(feature = "postgres")]
pub mod pg_tls;
pub mod remembered;

/// A failure opening, migrating or reaching a database. Backend errors are carried as opaque
/// sources (a [`pg::PgError`] for PostgreSQL, which says what to check).
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database could not be opened or migrated.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// What was being opened (a file, or PostgreSQL's servers without the password).
        path: String,
        /// Why it failed.
        source: Arc<dyn StdError + Send + Sync>,
    },
    /// A read or write failed (getting a connection included).
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
        /// Version in the database.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
}
