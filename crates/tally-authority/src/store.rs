//! The authority's storage: a trait (so a networked backend fits later, as for the host) and its
//! SQLite backend. Limit checks and the activation they allow happen in one `BEGIN IMMEDIATE`
//! transaction, so concurrent activations of one key cannot exceed its limits (R23).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use tally_core::time::Timestamp;
use thiserror::Error;

/// R23: distinct hosts per host key.
pub const DEFAULT_MAX_HOSTS: u32 = 6;
/// R23: activations per host (the first plus 9 reactivations).
pub const DEFAULT_MAX_ACTIVATIONS: u32 = 10;

const MIGRATIONS: &[&str] = &[include_str!("../migrations/0001_init.sql")];

/// Storage errors.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("authority database: {0}")]
    Backend(Arc<dyn std::error::Error + Send + Sync>),
    /// A newer schema.
    #[error("authority database schema {0} is newer than this Tally; upgrade Tally")]
    TooNew(i64),
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(Arc::new(e))
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
    /// Revokes a key.
    async fn revoke(
        &self,
        serial: u32,
        reason: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<KeyRecord>, StoreError>;
    /// The audit log, newest first.
    async fn audit(&self) -> Result<Vec<AuditEntry>, StoreError>;
}

/// The SQLite backend: one connection, used on the blocking pool.
#[derive(Clone)]
pub struct SqliteAuthorityStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteAuthorityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteAuthorityStore")
    }
}

impl SqliteAuthorityStore {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(backend)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(backend)?;
        if version > MIGRATIONS.len() as i64 {
            return Err(StoreError::TooNew(version));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(backend)?;
            tx.execute_batch(sql).map_err(backend)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut c)
        })
        .await
        .map_err(|e| StoreError::Backend(Arc::new(e)))?
        .map_err(backend)
    }
}

const KEY_COLUMNS: &str = "k.serial, k.kind, k.key_text, k.key_group, k.generation, k.max_hosts, k.max_activations, \
     (SELECT count(*) FROM activations a WHERE a.serial = k.serial), k.created_at, k.note, k.revoked_at, k.revoke_reason";

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
    Ok(KeyRecord {
        serial: r.get::<_, i64>(0)? as u32,
        kind: r.get(1)?,
        key: r.get(2)?,
        group: r.get(3)?,
        generation: r.get::<_, Option<i64>>(4)?.map(|g| g as u8),
        max_hosts: r.get(5)?,
        max_activations: r.get(6)?,
        hosts_used: r.get(7)?,
        created_at: Timestamp(r.get(8)?),
        note: r.get(9)?,
        revoked_at: r.get::<_, Option<i64>>(10)?.map(Timestamp),
        revoke_reason: r.get(11)?,
    })
}

fn load_key(c: &Connection, serial: u32) -> rusqlite::Result<Option<KeyRecord>> {
    c.query_row(
        &format!("SELECT {KEY_COLUMNS} FROM keys k WHERE k.serial = ?1"),
        params![serial],
        key_row,
    )
    .optional()
}

fn audit(
    c: &Connection,
    now: Timestamp,
    actor: &str,
    action: &str,
    serial: Option<u32>,
    detail: &str,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO audit (at, actor, action, serial, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now.millis(), actor, action, serial, detail],
    )
    .map(|_| ())
}

#[async_trait]
impl AuthorityStore for SqliteAuthorityStore {
    async fn insert_key(
        &self,
        key: NewKey,
        actor: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let actor = actor.to_owned();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let taken: bool = tx.query_row("SELECT count(*) > 0 FROM keys WHERE serial = ?1", params![key.serial], |r| r.get(0))?;
            if taken {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO keys (serial, kind, key_text, key_group, generation, max_hosts, max_activations, created_at, note)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![key.serial, key.kind, key.key, key.group, key.generation, key.max_hosts, key.max_activations, now.millis(), key.note],
            )?;
            audit(&tx, now, &actor, &format!("issue_{}_key", key.kind), Some(key.serial), &key.note)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn key(&self, serial: u32) -> Result<Option<KeyRecord>, StoreError> {
        self.with(move |c| load_key(c, serial)).await
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.with(|c| {
            let mut s = c.prepare(&format!(
                "SELECT {KEY_COLUMNS} FROM keys k ORDER BY k.created_at, k.serial"
            ))?;
            s.query_map([], key_row)?.collect()
        })
        .await
    }

    async fn activations(&self, serial: u32) -> Result<Vec<ActivationRecord>, StoreError> {
        self.with(move |c| {
            let mut s = c.prepare(
                "SELECT hardware, detail, count, first_at, last_at FROM activations WHERE serial = ?1 ORDER BY first_at",
            )?;
            s.query_map(params![serial], |r| {
                Ok(ActivationRecord {
                    hardware: r.get(0)?,
                    detail: r.get(1)?,
                    count: r.get(2)?,
                    first_at: Timestamp(r.get(3)?),
                    last_at: Timestamp(r.get(4)?),
                })
            })?
            .collect()
        })
        .await
    }

    async fn activate(
        &self,
        serial: u32,
        hardware: &str,
        detail: &str,
        now: Timestamp,
    ) -> Result<Result<Usage, Refusal>, StoreError> {
        let (hardware, detail) = (hardware.to_owned(), detail.to_owned());
        self.with(move |c| {
            // One writer at a time from the check to the insert: the limits hold under
            // concurrency (R23).
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(key) = load_key(&tx, serial)? else {
                return Ok(Err(Refusal::UnknownKey));
            };
            if key.revoked_at.is_some() {
                return Ok(Err(Refusal::Revoked { reason: key.revoke_reason.unwrap_or_default() }));
            }
            let existing: Option<u32> = tx
                .query_row(
                    "SELECT count FROM activations WHERE serial = ?1 AND hardware = ?2",
                    params![serial, hardware],
                    |r| r.get(0),
                )
                .optional()?;
            let (hosts_used, activations) = match existing {
                Some(n) if n >= key.max_activations => {
                    return Ok(Err(Refusal::TooManyActivations { max: key.max_activations }));
                }
                Some(n) => {
                    tx.execute(
                        "UPDATE activations SET count = count + 1, last_at = ?3, detail = ?4 WHERE serial = ?1 AND hardware = ?2",
                        params![serial, hardware, now.millis(), detail],
                    )?;
                    (key.hosts_used, n + 1)
                }
                None if key.hosts_used >= key.max_hosts => {
                    return Ok(Err(Refusal::TooManyHosts { max: key.max_hosts }));
                }
                None => {
                    tx.execute(
                        "INSERT INTO activations (serial, hardware, detail, count, first_at, last_at) VALUES (?1, ?2, ?3, 1, ?4, ?4)",
                        params![serial, hardware, detail, now.millis()],
                    )?;
                    (key.hosts_used + 1, 1)
                }
            };
            tx.commit()?;
            Ok(Ok(Usage { hosts_used, max_hosts: key.max_hosts, activations, max_activations: key.max_activations }))
        })
        .await
    }

    async fn grant_exception(
        &self,
        serial: u32,
        extra_hosts: u32,
        extra_activations: u32,
        reason: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (reason, actor) = (reason.to_owned(), actor.to_owned());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE keys SET max_hosts = max_hosts + ?2, max_activations = max_activations + ?3 WHERE serial = ?1",
                params![serial, extra_hosts, extra_activations],
            )?;
            if n == 0 {
                return Ok(None);
            }
            let detail = format!("+{extra_hosts} hosts, +{extra_activations} activations per host: {reason}");
            audit(&tx, now, &actor, "exception", Some(serial), &detail)?;
            let key = load_key(&tx, serial)?;
            tx.commit()?;
            Ok(key)
        })
        .await
    }

    async fn revoke(
        &self,
        serial: u32,
        reason: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let (reason, actor) = (reason.to_owned(), actor.to_owned());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = tx.execute(
                "UPDATE keys SET revoked_at = ?2, revoke_reason = ?3 WHERE serial = ?1",
                params![serial, now.millis(), reason],
            )?;
            if n == 0 {
                return Ok(None);
            }
            audit(&tx, now, &actor, "revoke", Some(serial), &reason)?;
            let key = load_key(&tx, serial)?;
            tx.commit()?;
            Ok(key)
        })
        .await
    }

    async fn audit(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.with(|c| {
            let mut s =
                c.prepare("SELECT at, actor, action, serial, detail FROM audit ORDER BY id DESC")?;
            s.query_map([], |r| {
                Ok(AuditEntry {
                    at: Timestamp(r.get(0)?),
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    serial: r.get::<_, Option<i64>>(3)?.map(|s| s as u32),
                    detail: r.get(4)?,
                })
            })?
            .collect()
        })
        .await
    }
}
