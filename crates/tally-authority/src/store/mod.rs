//! The authority's storage: one trait, [`AuthorityStore`], and two backends.
//!
//! Every backend checks a key's limits and records the activation they allow in one
//! transaction that excludes every other writer of that key, so concurrent activations cannot
//! exceed the limits (R23, R25), whether they arrive at one process or at several processes on
//! one database (X2).
//!
//! # Layout
//! - [`sqlite`]: the default, a file in the authority directory (`BEGIN IMMEDIATE`).
//! - [`postgres`] (feature `postgres`): a PostgreSQL database shared by any number of
//!   `tally authority run` processes (the key's row is locked with `SELECT … FOR UPDATE`).
//! - [`open`]: picks the backend from the `--database` URL.
//! - [`log`]: the transparency log's rows (X8): appended in the transaction of what they
//!   record, under one lock row, so indexes are dense across every process.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tally_core::time::Timestamp;
use tally_log::{Hash, LogEntry};
use tally_proto::revocation::{Entry, Reason, Subject};
use thiserror::Error;

pub use log::StoredEntry;

pub mod log;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod sqlite;

#[cfg(feature = "postgres")]
pub use postgres::PgAuthorityStore;
pub use sqlite::SqliteAuthorityStore;

/// R23: distinct hosts per host key.
pub const DEFAULT_MAX_HOSTS: u32 = 6;
/// R23: activations per host (the first plus 9 reactivations).
pub const DEFAULT_MAX_ACTIVATIONS: u32 = 10;

/// Storage errors.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("authority database: {0}")]
    Backend(Arc<dyn std::error::Error + Send + Sync>),
    /// The database could not be opened, reached or migrated; a schema written by a newer
    /// Tally is refused here ([`tally_db::DbError::TooNew`]).
    #[error("authority database: {0}")]
    Database(#[from] tally_db::DbError),
    /// A value read from the database is out of range (a damaged database).
    #[error("authority database: column {0} holds a value out of range")]
    BadValue(&'static str),
    /// The database the authority directory remembers cannot be read.
    #[error("{0}")]
    Remembered(Arc<tally_db::remembered::RememberError>),
    /// The `--database` URL names a backend this build does not have.
    #[error(
        "unsupported database URL {0:?}: give a postgres://USER@HOST[:PORT][,HOST[:PORT]...]/DATABASE URL, or none for the SQLite file in the authority directory"
    )]
    UnsupportedUrl(String),
    /// X8: a row of the transparency log was deleted or changed in the database.
    #[error(
        "authority database: the transparency log's entry {index} {what}; the log cannot be served until the database is restored from a backup"
    )]
    LogDamaged {
        /// The first damaged index.
        index: u64,
        /// What is wrong with it.
        what: &'static str,
    },
}

/// A key as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Serial.
    pub serial: u32,
    /// `host` or `mak`.
    pub kind: String,
    /// The key text.
    pub key: String,
    /// Key group (host keys).
    pub group: Option<String>,
    /// Generation (host keys).
    pub generation: Option<u8>,
    /// Distinct machines allowed (R23: 6 hosts; a MAK's budget).
    pub max_hosts: u32,
    /// Activations allowed per machine (R23: 10).
    pub max_activations: u32,
    /// Distinct machines so far.
    pub hosts_used: u32,
    /// When issued.
    pub created_at: Timestamp,
    /// Free text.
    pub note: String,
    /// When revoked, if it is.
    pub revoked_at: Option<Timestamp>,
    /// Why.
    pub revoke_reason: Option<String>,
}

/// One machine's activations with a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationRecord {
    /// The machine's hardware id.
    pub hardware: String,
    /// Host public key (hex) or the MAK client's CMID.
    pub detail: String,
    /// Activations of this machine with the key.
    pub count: u32,
    /// First activation.
    pub first_at: Timestamp,
    /// Latest activation.
    pub last_at: Timestamp,
}

/// An operator action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When.
    pub at: Timestamp,
    /// Who (the operator token's name, or `cli`).
    pub actor: String,
    /// What.
    pub action: String,
    /// Which key.
    pub serial: Option<u32>,
    /// Details (e.g. the reason of an exception).
    pub detail: String,
}

/// Why an activation was refused.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    /// Not in the database.
    #[error("unknown key")]
    UnknownKey,
    /// Revoked.
    #[error("this key was revoked: {reason}")]
    Revoked {
        /// Why.
        reason: String,
    },
    /// R23: the key already activated its maximum of distinct machines.
    #[error(
        "this key already activated {max} machines (the limit); the vendor can grant an exception"
    )]
    TooManyHosts {
        /// The limit.
        max: u32,
    },
    /// R23: this machine reactivated its maximum number of times.
    #[error(
        "this machine already activated {max} times with this key (the limit); the vendor can grant an exception"
    )]
    TooManyActivations {
        /// The limit.
        max: u32,
    },
}

/// What an allowed activation used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Distinct machines, this one included.
    pub hosts_used: u32,
    /// The machine limit.
    pub max_hosts: u32,
    /// This machine's activations, this one included.
    pub activations: u32,
    /// The per-machine limit.
    pub max_activations: u32,
}

/// A key to record.
#[derive(Clone, Debug)]
pub struct NewKey {
    /// Serial.
    pub serial: u32,
    /// `host` or `mak`.
    pub kind: &'static str,
    /// Text.
    pub key: String,
    /// Group (host keys).
    pub group: Option<String>,
    /// Generation (host keys).
    pub generation: Option<u8>,
    /// Machines allowed.
    pub max_hosts: u32,
    /// Activations per machine.
    pub max_activations: u32,
    /// Free text.
    pub note: String,
}

/// A host certificate to record (X7).
#[derive(Clone, Debug)]
pub struct NewCertificate {
    /// SHA-256 of the certificate.
    pub fingerprint: [u8; 32],
    /// The host key's serial.
    pub serial: u32,
    /// The hardware id the host claimed (hex).
    pub hardware: String,
    /// The certified host public key (hex).
    pub host_key: String,
}

/// One row of the revocation list (X7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevocationRecord {
    /// Grows with every change: the serial of the first list that carries it.
    pub id: u32,
    /// The entry.
    pub entry: Entry,
}

/// The columns a subject is stored in: its kind and its text (fingerprint hex or serial).
pub fn subject_columns(subject: &Subject) -> (&'static str, String) {
    match subject {
        Subject::Certificate(fp) => ("certificate", tally_core::hex::to_hex(fp)),
        Subject::HostKey(serial) => ("host_key", serial.to_string()),
        Subject::Mak(serial) => ("mak", serial.to_string()),
    }
}

/// The subject stored as `kind` and `text`, or `None` for a damaged row.
pub fn subject_from_columns(kind: &str, text: &str) -> Option<Subject> {
    match kind {
        "certificate" => tally_core::hex::from_hex(text)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(Subject::Certificate),
        "host_key" => text.parse().ok().map(Subject::HostKey),
        "mak" => text.parse().ok().map(Subject::Mak),
        _ => None,
    }
}

/// The subject a revoked key goes on the list as.
pub fn key_subject(kind: &str, serial: u32) -> Subject {
    if kind == "mak" {
        Subject::Mak(serial)
    } else {
        Subject::HostKey(serial)
    }
}

/// What the authority needs from storage.
#[async_trait]
pub trait AuthorityStore: Send + Sync + 'static {
    /// Records an issued key; `false` if the serial is taken.
    async fn insert_key(
        &self,
        key: NewKey,
        actor: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    /// A key by serial.
    async fn key(&self, serial: u32) -> Result<Option<KeyRecord>, StoreError>;
    /// All keys.
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// A key's activations.
    async fn activations(&self, serial: u32) -> Result<Vec<ActivationRecord>, StoreError>;
    /// Checks the limits and records the activation of `hardware` atomically (R23).
    async fn activate(
        &self,
        serial: u32,
        hardware: &str,
        detail: &str,
        now: Timestamp,
    ) -> Result<Result<Usage, Refusal>, StoreError>;
    /// Raises a key's limits, with a reason kept in the audit log.
    async fn grant_exception(
        &self,
        serial: u32,
        extra_hosts: u32,
        extra_activations: u32,
        reason: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<KeyRecord>, StoreError>;
    /// Revokes a key and, in the same transaction, puts it on the revocation list with `code`
    /// (X7); `reason` is the operator's words, kept in the key record and the audit log.
    async fn revoke(
        &self,
        serial: u32,
        reason: &str,
        code: Reason,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<KeyRecord>, StoreError>;
    /// Records a certificate just issued and, in the same transaction, supersedes every
    /// earlier certificate of the same key and machine (hardware id): they go on the
    /// revocation list as `superseded`, so a key never has more live certificates than
    /// machines it may activate (R23, X7). Returns the superseded fingerprints.
    async fn record_certificate(
        &self,
        cert: NewCertificate,
        now: Timestamp,
    ) -> Result<Vec<[u8; 32]>, StoreError>;
    /// Puts one certificate on the revocation list; `false` if it already was.
    async fn revoke_certificate(
        &self,
        fingerprint: [u8; 32],
        code: Reason,
        note: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    /// The revocation list's rows, by id.
    async fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError>;
    /// The audit log, newest first.
    async fn audit(&self) -> Result<Vec<AuditEntry>, StoreError>;
    /// As [`AuthorityStore::activate`], and appends `entry` (the object signed for this
    /// activation) to the transparency log in the same transaction (X8): an activation is
    /// counted if and only if what it delivers is logged. Returns the entry's index.
    async fn activate_logged(
        &self,
        serial: u32,
        hardware: &str,
        detail: &str,
        now: Timestamp,
        entry: &LogEntry,
    ) -> Result<Result<(Usage, u64), Refusal>, StoreError>;
    /// X8: appends `entry` to the transparency log in a transaction of its own (a signed
    /// catalog, a revocation list, a certificate made without activation); returns its index.
    async fn append_log(&self, entry: &LogEntry) -> Result<u64, StoreError>;
    /// X8: the number of entries in the log.
    async fn log_size(&self) -> Result<u64, StoreError>;
    /// X8: the leaf hashes of entries `0..size`, checked dense.
    async fn log_leaf_hashes(&self, size: u64) -> Result<Vec<Hash>, StoreError>;
    /// X8: up to `limit` entries from index `from`, in index order, each checked.
    async fn log_entries(&self, from: u64, limit: u32) -> Result<Vec<StoredEntry>, StoreError>;
    /// X8: the index of the latest entry whose object has SHA-256 `object_hash`.
    async fn log_find(&self, object_hash: &Hash) -> Result<Option<u64>, StoreError>;
}

/// File name of the authority's SQLite database in its directory.
pub const DB_FILE: &str = "authority.db";

/// Opens the authority's state: the SQLite file `authority.db` in `dir` when no database is
/// given or remembered, else the PostgreSQL database at the `postgres://` (or `postgresql://`)
/// URL `database`, or the one `dir` remembers (`dir/database.url` and its 0600 password file,
/// see [`tally_db::remembered`] and [`crate::dir::remember_database`]), creating and
/// migrating the schema in either case. A given URL wins over the remembered one; an
/// authentication error says which password to fix.
pub async fn open(
    dir: &Path,
    database: Option<&str>,
) -> Result<Arc<dyn AuthorityStore>, StoreError> {
    let resolved = match database {
        Some("sqlite" | "") => None,
        given => tally_db::remembered::resolve(dir, given)
            .map_err(|e| StoreError::Remembered(Arc::new(e)))?,
    };
    match resolved {
        None => {
            let path = dir.join(DB_FILE);
            let store = tokio::task::spawn_blocking(move || SqliteAuthorityStore::open(&path))
                .await
                .map_err(|e| StoreError::Backend(Arc::new(e)))??;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "postgres")]
        Some(r) if r.url.starts_with("postgres://") || r.url.starts_with("postgresql://") => {
            match PgAuthorityStore::connect(&r.url).await {
                Ok(store) => Ok(Arc::new(store)),
                Err(StoreError::Database(e)) => Err(StoreError::Database(
                    tally_db::remembered::explain(e, &r.password),
                )),
                Err(e) => Err(e),
            }
        }
        Some(other) => Err(StoreError::UnsupportedUrl(
            // Never echo a password: keep only the scheme.
            other.url.split(':').next().unwrap_or_default().to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests;
