//! The PostgreSQL backend of the authority store: any number of `tally authority run`
//! processes on one database (X2).
//!
//! Every write to a key's state first locks the key's row (`SELECT … FOR UPDATE`) in its
//! transaction, and only then reads what it checks, in a statement of its own: under READ
//! COMMITTED each statement sees what the previous holders of the lock committed, so the check
//! and the write it allows are atomic across processes and the R23 limits and MAK budgets (R25)
//! hold exactly. Transactions aborted as serialization failures or deadlocks are run again
//! (`tally_db::pg::retry`). Tables are prefixed `authority_` so the database can also hold
//! other Tally schemas.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool};
use tally_core::time::Timestamp;
use tally_db::pg;
use tally_log::{Hash, LogEntry};
use tokio_postgres::Row;

use tally_proto::revocation::{Reason, Subject};

use super::log::{StoredEntry, checked_row, dense_leaves, object_hash};
use super::{
    ActivationRecord, AuditEntry, AuthorityStore, KeyRecord, NewCertificate, NewKey, Refusal,
    RevocationRecord, StoreError, Usage, key_subject,
};

mod revocations;

pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_revocations.sql"),
    include_str!("../../migrations/postgres/0003_log.sql"),
];

/// The schema version this build writes (the number of migrations).
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// The advisory lock (and `tally_schema` row) of the authority's schema: "tallyAUT".
pub const SCHEMA_LOCK_KEY: i64 = 0x7461_6c6c_7941_5554;

/// The PostgreSQL backend: a connection pool (see `tally_db::pg::connect`).
#[derive(Clone)]
pub struct PgAuthorityStore {
    pool: Pool,
    /// The servers and database, for error messages (never the password).
    servers: Arc<str>,
}

impl std::fmt::Debug for PgAuthorityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAuthorityStore")
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// Why one attempt of a transaction failed.
#[derive(Debug)]
enum Fail {
    Db(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl pg::Retryable for Fail {
    fn is_retryable(&self) -> bool {
        matches!(self, Self::Db(e) if pg::is_retryable(e))
    }
}

impl From<Fail> for StoreError {
    fn from(f: Fail) -> Self {
        match f {
            Fail::Db(e) => StoreError::Backend(Arc::new(e)),
            Fail::Store(e) => e,
        }
    }
}

impl PgAuthorityStore {
    /// Connects to the database at `url` (see `tally_db::pg::connect` for the URL forms)
    /// and creates or migrates the authority's tables under an advisory lock, so several
    /// processes may start at once on an empty database.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = pg::connect(url).await?;
        let servers: Arc<str> = Arc::from(pg::describe(url));
        let mut client = pg::client(&pool, &servers).await?;
        tally_db::migrate::postgres(&mut client, MIGRATIONS, SCHEMA_LOCK_KEY).await?;
        Ok(Self { pool, servers })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Fail> {
        pg::client(&self.pool, &self.servers)
            .await
            .map_err(|e| Fail::Store(e.into()))
    }

    async fn insert_key_once(
        &self,
        key: &NewKey,
        actor: &str,
        now: Timestamp,
    ) -> Result<bool, Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "INSERT INTO authority_keys (serial, kind, key_text, key_group, generation, max_hosts, max_activations, created_at, note)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                &[
                    &i64::from(key.serial),
                    &key.kind,
                    &key.key,
                    &key.group,
                    &key.generation.map(i64::from),
                    &i64::from(key.max_hosts),
                    &i64::from(key.max_activations),
                    &now.millis(),
                    &key.note,
                ],
            )
            .await?;
        if n == 0 {
            return Ok(false);
        }
        audit(
            &tx,
            now,
            actor,
            &format!("issue_{}_key", key.kind),
            Some(key.serial),
            &key.note,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn activate_once(
        &self,
        serial: u32,
        hardware: &str,
        detail: &str,
        now: Timestamp,
        entry: Option<&LogEntry>,
    ) -> Result<Result<(Usage, Option<u64>), Refusal>, Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let usage = match activate_in(&tx, serial, hardware, detail, now).await? {
            Ok(u) => u,
            Err(refusal) => return Ok(Err(refusal)),
        };
        // X8: what this activation delivers is logged in its transaction. The log's lock row
        // is taken last, after the key's, so every transaction locks in the same order and
        // holds the log only for its last statements.
        let index = match entry {
            Some(e) => Some(append_in(&tx, e).await?),
            None => None,
        };
        tx.commit().await?;
        Ok(Ok((usage, index)))
    }

    async fn append_once(&self, entry: &LogEntry) -> Result<u64, Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let index = append_in(&tx, entry).await?;
        tx.commit().await?;
        Ok(index)
    }

    async fn exception_once(
        &self,
        serial: u32,
        extra_hosts: u32,
        extra_activations: u32,
        reason: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<KeyRecord>, Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "UPDATE authority_keys SET max_hosts = max_hosts + $2, max_activations = max_activations + $3
                 WHERE serial = $1",
                &[&i64::from(serial), &i64::from(extra_hosts), &i64::from(extra_activations)],
            )
            .await?;
        if n == 0 {
            return Ok(None);
        }
        let detail =
            format!("+{extra_hosts} hosts, +{extra_activations} activations per host: {reason}");
        audit(&tx, now, actor, "exception", Some(serial), &detail).await?;
        let key = load_key(&tx, serial).await?;
        tx.commit().await?;
        Ok(key)
    }

    async fn revoke_once(
        &self,
        serial: u32,
        reason: &str,
        code: Reason,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<KeyRecord>, Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // The key's row first (its UPDATE locks it), then the list's lock: the one order.
        let n = tx
            .execute(
                "UPDATE authority_keys SET revoked_at = $2, revoke_reason = $3 WHERE serial = $1",
                &[&i64::from(serial), &now.millis(), &reason],
            )
            .await?;
        if n == 0 {
            return Ok(None);
        }
        let detail = format!("{}: {reason}", code.name());
        audit(&tx, now, actor, "revoke", Some(serial), &detail).await?;
        let key = load_key(&tx, serial).await?;
        if let Some(k) = &key {
            revocations::add(&tx, &key_subject(&k.kind, serial), code, now).await?;
        }
        tx.commit().await?;
        Ok(key)
    }

    async fn record_certificate_once(
        &self,
        cert: &NewCertificate,
        now: Timestamp,
    ) -> Result<Vec<[u8; 32]>, Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        if !lock_key(&tx, cert.serial).await? {
            return Err(bad("authority_certificates.serial"));
        }
        let superseded = revocations::record_certificate(&tx, cert, now).await?;
        tx.commit().await?;
        Ok(superseded)
    }

    async fn revoke_certificate_once(
        &self,
        fingerprint: [u8; 32],
        code: Reason,
        note: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<bool, Fail> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let added = revocations::add(&tx, &Subject::Certificate(fingerprint), code, now).await?;
        if added {
            let detail = format!(
                "certificate {}: {}: {note}",
                tally_core::hex::to_hex(&fingerprint),
                code.name()
            );
            audit(&tx, now, actor, "revoke_certificate", None, &detail).await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    async fn keys_once(&self) -> Result<Vec<KeyRecord>, Fail> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {KEY_COLUMNS} FROM authority_keys k ORDER BY k.created_at, k.serial"
                ),
                &[],
            )
            .await?;
        rows.iter().map(key_row).collect()
    }

    async fn activations_once(&self, serial: u32) -> Result<Vec<ActivationRecord>, Fail> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT hardware, detail, count, first_at, last_at FROM authority_activations
                 WHERE serial = $1 ORDER BY first_at, hardware",
                &[&i64::from(serial)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ActivationRecord {
                    hardware: r.try_get(0)?,
                    detail: r.try_get(1)?,
                    count: column_u32(r, 2, "authority_activations.count")?,
                    first_at: Timestamp(r.try_get(3)?),
                    last_at: Timestamp(r.try_get(4)?),
                })
            })
            .collect()
    }

    async fn audit_once(&self) -> Result<Vec<AuditEntry>, Fail> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT at, actor, action, serial, detail FROM authority_audit ORDER BY id DESC",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: Timestamp(r.try_get(0)?),
                    actor: r.try_get(1)?,
                    action: r.try_get(2)?,
                    serial: r
                        .try_get::<_, Option<i64>>(3)?
                        .map(|s| u32::try_from(s).map_err(|_| bad("authority_audit.serial")))
                        .transpose()?,
                    detail: r.try_get(4)?,
                })
            })
            .collect()
    }
}

const KEY_COLUMNS: &str = "k.serial, k.kind, k.key_text, k.key_group, k.generation, k.max_hosts, \
     k.max_activations, (SELECT count(*) FROM authority_activations a WHERE a.serial = k.serial), \
     k.created_at, k.note, k.revoked_at, k.revoke_reason";

fn bad(column: &'static str) -> Fail {
    Fail::Store(StoreError::BadValue(column))
}

fn column_u32(r: &Row, i: usize, column: &'static str) -> Result<u32, Fail> {
    u32::try_from(r.try_get::<_, i64>(i)?).map_err(|_| bad(column))
}

fn key_row(r: &Row) -> Result<KeyRecord, Fail> {
    Ok(KeyRecord {
        serial: column_u32(r, 0, "authority_keys.serial")?,
        kind: r.try_get(1)?,
        key: r.try_get(2)?,
        group: r.try_get(3)?,
        generation: r
            .try_get::<_, Option<i64>>(4)?
            .map(|g| u8::try_from(g).map_err(|_| bad("authority_keys.generation")))
            .transpose()?,
        max_hosts: column_u32(r, 5, "authority_keys.max_hosts")?,
        max_activations: column_u32(r, 6, "authority_keys.max_activations")?,
        hosts_used: column_u32(r, 7, "hosts_used")?,
        created_at: Timestamp(r.try_get(8)?),
        note: r.try_get(9)?,
        revoked_at: r.try_get::<_, Option<i64>>(10)?.map(Timestamp),
        revoke_reason: r.try_get(11)?,
    })
}

/// Locks the key's row until the transaction ends; `false` if there is no such key.
async fn lock_key(c: &impl GenericClient, serial: u32) -> Result<bool, Fail> {
    Ok(c.query_opt(
        "SELECT serial FROM authority_keys WHERE serial = $1 FOR UPDATE",
        &[&i64::from(serial)],
    )
    .await?
    .is_some())
}

async fn load_key(c: &impl GenericClient, serial: u32) -> Result<Option<KeyRecord>, Fail> {
    c.query_opt(
        &format!("SELECT {KEY_COLUMNS} FROM authority_keys k WHERE k.serial = $1"),
        &[&i64::from(serial)],
    )
    .await?
    .as_ref()
    .map(key_row)
    .transpose()
}

async fn audit(
    c: &impl GenericClient,
    now: Timestamp,
    actor: &str,
    action: &str,
    serial: Option<u32>,
    detail: &str,
) -> Result<(), Fail> {
    c.execute(
        "INSERT INTO authority_audit (at, actor, action, serial, detail) VALUES ($1, $2, $3, $4, $5)",
        &[&now.millis(), &actor, &action, &serial.map(i64::from), &detail],
    )
    .await?;
    Ok(())
}

/// R23: checks the key's limits and records the activation, inside `tx` (not committed).
async fn activate_in(
    tx: &impl GenericClient,
    serial: u32,
    hardware: &str,
    detail: &str,
    now: Timestamp,
) -> Result<Result<Usage, Refusal>, Fail> {
    // The key's row lock orders every activation of this key, in every process (R23, X2).
    // What is checked is read after it, in statements of their own (fresh snapshots).
    if !lock_key(tx, serial).await? {
        return Ok(Err(Refusal::UnknownKey));
    }
    let Some(key) = load_key(tx, serial).await? else {
        return Ok(Err(Refusal::UnknownKey));
    };
    if key.revoked_at.is_some() {
        return Ok(Err(Refusal::Revoked {
            reason: key.revoke_reason.unwrap_or_default(),
        }));
    }
    let existing = tx
        .query_opt(
            "SELECT count FROM authority_activations WHERE serial = $1 AND hardware = $2",
            &[&i64::from(serial), &hardware],
        )
        .await?
        .map(|r| column_u32(&r, 0, "authority_activations.count"))
        .transpose()?;
    let (hosts_used, activations) = match existing {
        Some(n) if n >= key.max_activations => {
            return Ok(Err(Refusal::TooManyActivations {
                max: key.max_activations,
            }));
        }
        Some(n) => {
            tx.execute(
                "UPDATE authority_activations SET count = count + 1, last_at = $3, detail = $4
                     WHERE serial = $1 AND hardware = $2",
                &[&i64::from(serial), &hardware, &now.millis(), &detail],
            )
            .await?;
            (key.hosts_used, n.saturating_add(1))
        }
        None if key.hosts_used >= key.max_hosts => {
            return Ok(Err(Refusal::TooManyHosts { max: key.max_hosts }));
        }
        None => {
            tx.execute(
                    "INSERT INTO authority_activations (serial, hardware, detail, count, first_at, last_at)
                     VALUES ($1, $2, $3, 1, $4, $4)",
                    &[&i64::from(serial), &hardware, &detail, &now.millis()],
                )
                .await?;
            (key.hosts_used.saturating_add(1), 1)
        }
    };
    Ok(Ok(Usage {
        hosts_used,
        max_hosts: key.max_hosts,
        activations,
        max_activations: key.max_activations,
    }))
}

/// X8: appends `entry` inside `tx` at the next index. The `UPDATE` of the one size row locks it
/// until `tx` ends, so appends from every process on the database are serialised: indexes are
/// dense, never duplicated, never reused.
async fn append_in(tx: &impl GenericClient, entry: &LogEntry) -> Result<u64, Fail> {
    let row = tx
        .query_one(
            "UPDATE authority_log_state SET size = size + 1 WHERE id = 1 RETURNING size - 1",
            &[],
        )
        .await?;
    let index: i64 = row.try_get(0)?;
    tx.execute(
        "INSERT INTO authority_log_entries (idx, kind, at, object, object_hash, leaf_hash)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &index,
            &i16::from(entry.kind.code()),
            &entry.timestamp_ms,
            &entry.object,
            &object_hash(&entry.object).as_slice(),
            &entry.leaf_hash().as_slice(),
        ],
    )
    .await?;
    u64::try_from(index).map_err(|_| bad("authority_log_state.size"))
}

async fn log_size(c: &impl GenericClient) -> Result<u64, Fail> {
    let size: i64 = c
        .query_one("SELECT size FROM authority_log_state WHERE id = 1", &[])
        .await?
        .try_get(0)?;
    u64::try_from(size).map_err(|_| bad("authority_log_state.size"))
}

async fn log_leaf_hashes(c: &impl GenericClient, size: u64) -> Result<Vec<Hash>, Fail> {
    let limit = i64::try_from(size).map_err(|_| bad("log size"))?;
    let rows = c
        .query(
            "SELECT idx, leaf_hash FROM authority_log_entries WHERE idx < $1 ORDER BY idx",
            &[&limit],
        )
        .await?;
    let pairs = rows
        .iter()
        .map(|r| Ok((r.try_get::<_, i64>(0)?, r.try_get::<_, Vec<u8>>(1)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    Ok(dense_leaves(pairs, size)?)
}

async fn log_entries(
    c: &impl GenericClient,
    from: u64,
    limit: u32,
) -> Result<Vec<StoredEntry>, Fail> {
    let from = i64::try_from(from).unwrap_or(i64::MAX);
    let rows = c
        .query(
            "SELECT idx, kind, at, object, leaf_hash FROM authority_log_entries
             WHERE idx >= $1 ORDER BY idx LIMIT $2",
            &[&from, &i64::from(limit)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let kind: i16 = r.try_get(1)?;
            Ok(checked_row(
                r.try_get(0)?,
                i64::from(kind),
                r.try_get(2)?,
                r.try_get(3)?,
                &r.try_get::<_, Vec<u8>>(4)?,
            )?)
        })
        .collect()
}

async fn log_find(c: &impl GenericClient, object_hash: &Hash) -> Result<Option<u64>, Fail> {
    let idx: Option<i64> = c
        .query_one(
            "SELECT max(idx) FROM authority_log_entries WHERE object_hash = $1",
            &[&object_hash.as_slice()],
        )
        .await?
        .try_get(0)?;
    idx.map(|i| u64::try_from(i).map_err(|_| bad("log index")))
        .transpose()
}

#[async_trait]
impl AuthorityStore for PgAuthorityStore {
    async fn insert_key(
        &self,
        key: NewKey,
        actor: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        Ok(pg::retry(|| self.insert_key_once(&key, actor, now)).await?)
    }

    async fn key(&self, serial: u32) -> Result<Option<KeyRecord>, StoreError> {
        Ok(pg::retry(|| async move {
            let c = self.client().await?;
            load_key(&c, serial).await
        })
        .await?)
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(pg::retry(|| self.keys_once()).await?)
    }

    async fn activations(&self, serial: u32) -> Result<Vec<ActivationRecord>, StoreError> {
        Ok(pg::retry(|| self.activations_once(serial)).await?)
    }

    async fn activate(
        &self,
        serial: u32,
        hardware: &str,
        detail: &str,
        now: Timestamp,
    ) -> Result<Result<Usage, Refusal>, StoreError> {
        let out = pg::retry(|| self.activate_once(serial, hardware, detail, now, None)).await?;
        Ok(out.map(|(usage, _)| usage))
    }

    async fn activate_logged(
        &self,
        serial: u32,
        hardware: &str,
        detail: &str,
        now: Timestamp,
        entry: &LogEntry,
    ) -> Result<Result<(Usage, u64), Refusal>, StoreError> {
        let out =
            pg::retry(|| self.activate_once(serial, hardware, detail, now, Some(entry))).await?;
        // `Some(entry)` was appended: the index is there.
        Ok(out.map(|(usage, index)| (usage, index.unwrap_or_default())))
    }

    async fn append_log(&self, entry: &LogEntry) -> Result<u64, StoreError> {
        Ok(pg::retry(|| self.append_once(entry)).await?)
    }

    async fn log_size(&self) -> Result<u64, StoreError> {
        Ok(pg::retry(|| async move { log_size(&self.client().await?).await }).await?)
    }

    async fn log_leaf_hashes(&self, size: u64) -> Result<Vec<Hash>, StoreError> {
        Ok(pg::retry(|| async move { log_leaf_hashes(&self.client().await?, size).await }).await?)
    }

    async fn log_entries(&self, from: u64, limit: u32) -> Result<Vec<StoredEntry>, StoreError> {
        Ok(
            pg::retry(|| async move { log_entries(&self.client().await?, from, limit).await })
                .await?,
        )
    }

    async fn log_find(&self, object_hash: &Hash) -> Result<Option<u64>, StoreError> {
        Ok(pg::retry(|| async move { log_find(&self.client().await?, object_hash).await }).await?)
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
        Ok(pg::retry(|| {
            self.exception_once(serial, extra_hosts, extra_activations, reason, actor, now)
        })
        .await?)
    }

    async fn revoke(
        &self,
        serial: u32,
        reason: &str,
        code: Reason,
        actor: &str,
        now: Timestamp,
    ) -> Result<Option<KeyRecord>, StoreError> {
        Ok(pg::retry(|| self.revoke_once(serial, reason, code, actor, now)).await?)
    }

    async fn record_certificate(
        &self,
        cert: NewCertificate,
        now: Timestamp,
    ) -> Result<Vec<[u8; 32]>, StoreError> {
        Ok(pg::retry(|| self.record_certificate_once(&cert, now)).await?)
    }

    async fn revoke_certificate(
        &self,
        fingerprint: [u8; 32],
        code: Reason,
        note: &str,
        actor: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        Ok(pg::retry(|| self.revoke_certificate_once(fingerprint, code, note, actor, now)).await?)
    }

    async fn revocations(&self) -> Result<Vec<RevocationRecord>, StoreError> {
        Ok(pg::retry(|| async {
            let c = self.client().await?;
            revocations::all(&c).await
        })
        .await?)
    }

    async fn audit(&self) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(pg::retry(|| self.audit_once()).await?)
    }
}
