//! The SQLite backend of the authority store: one connection, used on the blocking pool.
//! Limit checks and the activation they allow happen in one `BEGIN IMMEDIATE` transaction; a
//! second process on the same file waits for the lock (`busy_timeout`), so the limits hold
//! across processes too (R23).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tally_core::time::Timestamp;
use tally_log::{Hash, LogEntry};

use tally_proto::revocation::Reason;

use super::log::{StoredEntry, checked_row, dense_leaves, object_hash};
use super::{
    ActivationRecord, AuditEntry, AuthorityStore, KeyRecord, NewCertificate, NewKey, Refusal,
    RevocationRecord, StoreError, Usage, key_subject,
};

mod revocations;

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_revocations.sql"),
    include_str!("../../migrations/sqlite/0003_log.sql"),
];

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(Arc::new(e))
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
        // X4: the authority's database is its owner's alone (0600, -wal and -shm too).
        tally_db::fsmode::prepare_sqlite(path).map_err(|e| {
            StoreError::Database(tally_db::DbError::Open {
                path: path.display().to_string(),
                source: Arc::new(e),
            })
        })?;
        let mut conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(backend)?;
        tally_db::migrate::sqlite(&mut conn, MIGRATIONS, path)?;
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

/// R23: checks the key's limits and records the activation, inside `tx` (not committed).
fn activate_in(
    tx: &Connection,
    serial: u32,
    hardware: &str,
    detail: &str,
    now: Timestamp,
) -> rusqlite::Result<Result<Usage, Refusal>> {
    let Some(key) = load_key(tx, serial)? else {
        return Ok(Err(Refusal::UnknownKey));
    };
    if key.revoked_at.is_some() {
        return Ok(Err(Refusal::Revoked {
            reason: key.revoke_reason.unwrap_or_default(),
        }));
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
            return Ok(Err(Refusal::TooManyActivations {
                max: key.max_activations,
            }));
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
    Ok(Ok(Usage {
        hosts_used,
        max_hosts: key.max_hosts,
        activations,
        max_activations: key.max_activations,
    }))
}

/// X8: appends `entry` inside `tx` at the next index. The size row is updated first: the
/// transaction (already `IMMEDIATE`, the one writer of the file) takes the next index, which
/// is never reused, even if a row were deleted.
fn append_in(tx: &Connection, entry: &LogEntry) -> rusqlite::Result<u64> {
    let index: i64 = tx.query_row(
        "UPDATE log_state SET size = size + 1 WHERE id = 1 RETURNING size - 1",
        [],
        |r| r.get(0),
    )?;
    tx.execute(
        "INSERT INTO log_entries (idx, kind, at, object, object_hash, leaf_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            index,
            entry.kind.code(),
            entry.timestamp_ms,
            entry.object,
            object_hash(&entry.object).to_vec(),
            entry.leaf_hash().to_vec()
        ],
    )?;
    // The size row holds a non-negative count (updated only here).
    Ok(index.max(0) as u64)
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
            let usage = activate_in(&tx, serial, &hardware, &detail, now)?;
            if usage.is_ok() {
                tx.commit()?;
            }
            Ok(usage)
        })
        .await
    }

    async fn activate_logged(
        &self,
        serial: u32,
        hardware: &str,
        detail: &str,
        now: Timestamp,
        entry: &LogEntry,
    ) -> Result<Result<(Usage, u64), Refusal>, StoreError> {
        let (hardware, detail, entry) = (hardware.to_owned(), detail.to_owned(), entry.clone());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let usage = match activate_in(&tx, serial, &hardware, &detail, now)? {
                Ok(u) => u,
                Err(refusal) => return Ok(Err(refusal)),
            };
            // X8: what this activation delivers is logged in its transaction.
            let index = append_in(&tx, &entry)?;
            tx.commit()?;
            Ok(Ok((usage, index)))
        })
        .await
    }

    async fn append_log(&self, entry: &LogEntry) -> Result<u64, StoreError> {
        let entry = entry.clone();
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let index = append_in(&tx, &entry)?;
            tx.commit()?;
            Ok(index)
        })
        .await
    }

    async fn log_size(&self) -> Result<u64, StoreError> {
        let size: i64 = self
            .with(|c| c.query_row("SELECT size FROM log_state WHERE id = 1", [], |r| r.get(0)))
            .await?;
        u64::try_from(size).map_err(|_| StoreError::BadValue("log_state.size"))
    }

    async fn log_leaf_hashes(&self, size: u64) -> Result<Vec<Hash>, StoreError> {
        let limit = i64::try_from(size).map_err(|_| StoreError::BadValue("log size"))?;
        let rows = self
            .with(move |c| {
                let mut s = c.prepare(
                    "SELECT idx, leaf_hash FROM log_entries WHERE idx < ?1 ORDER BY idx",
                )?;
                s.query_map(params![limit], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        dense_leaves(rows, size)
    }

    async fn log_entries(&self, from: u64, limit: u32) -> Result<Vec<StoredEntry>, StoreError> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let rows = self
            .with(move |c| {
                let mut s = c.prepare(
                    "SELECT idx, kind, at, object, leaf_hash FROM log_entries
                     WHERE idx >= ?1 ORDER BY idx LIMIT ?2",
                )?;
                s.query_map(params![from, limit], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get::<_, Vec<u8>>(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<(i64, i64, i64, Vec<u8>, Vec<u8>)>>>()
            })
            .await?;
        rows.into_iter()
            .map(|(i, k, at, o, h)| checked_row(i, k, at, o, &h))
            .collect()
    }

    async fn log_find(&self, object_hash: &Hash) -> Result<Option<u64>, StoreError> {
        let hash = object_hash.to_vec();
        let idx: Option<i64> = self
            .with(move |c| {
                c.query_row(
                    "SELECT max(idx) FROM log_entries WHERE object_hash = ?1",
                    params![hash],
                    |r| r.get(0),
                )
            })
            .await?;
        idx.map(|i| u64::try_from(i).map_err(|_| StoreError::BadValue("log index")))
            .transpose()
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
        code: Reason,
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
            audit(
                &tx,
                now,
                &actor,
                "revoke",
                Some(serial),
                &format!("{}: {reason}", code.name()),
            )?;
            let key = load_key(&tx, serial)?;
            if let Some(k) = &key {
                revocations::add(&tx, &key_subject(&k.kind, serial), code, now)?;
            }
            tx.commit()?;
            Ok(key)
        })
        .await
    }

    async fn record_certificate(
        &self,
        cert: NewCertificate,
        now: Timestamp,
    ) -> Result<Vec<[u8; 32]>, StoreError> {
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let superseded = revocations::record_certificate(&tx, &cert, now)?;
            tx.commit()?;
            Ok(superseded)
        })
        .await
    }

    async fn revoke_certificate(
        &self,
        fingerprint: [u8; 32],
        code: Reason,
        note: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let (note, actor) = (note.to_owned(), actor.to_owned());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let subject = tally_proto::revocation::Subject::Certificate(fingerprint);
            let added = revocations::add(&tx, &subject, code, now)?;
            if added {
                let detail = format!(
                    "certificate {}: {}: {note}",
                    tally_core::hex::to_hex(&fingerprint),
                    code.name()
                );
                audit(&tx, now, &actor, "revoke_certificate", None, &detail)?;
            }
            tx.commit()?;
            Ok(added)
        })
        .await
    }

    async fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        self.with(|c| revocations::all(c)).await
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
