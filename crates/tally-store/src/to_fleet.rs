//! Moving a single host's embedded database into a fleet's PostgreSQL database (issue 21 part 6,
//! `tally host migrate --to URL`): the pools' tables, the registry, the events and the refusal
//! counters, in **one** PostgreSQL transaction (all or nothing), so the fleet counts on from
//! where the single host stopped (R2–R5 on the same table rows).
//!
//! The source is read through a read-only connection (the caller holds the data directory's
//! lock, so no host writes it meanwhile). The target's schema is created or migrated first, under
//! the same advisory lock hosts take. Refused, before anything is written:
//! - a pool the target already counts machines in (two counts cannot be merged into one table
//!   without choosing which machines to drop);
//! - a machine (CMID) the target's registry already holds.
//!
//! The moved pools' rows are locked (`FOR UPDATE`, as every batch of a running fleet host does)
//! before the check, so a fleet host cannot start counting one of them half-way through. The
//! moved registry rows and events name `served_by` as their host. The bench registry and the
//! clock marks are not moved (a fleet's clock is the database's, X5).

use std::path::Path;
use std::sync::{Arc, Mutex};

use deadpool_postgres::Pool;
use rusqlite::{Connection, OpenFlags};
use thiserror::Error;
use uuid::Uuid;

use crate::StoreError;

/// Rows read and written per round trip.
const PAGE: usize = 5_000;

/// What was moved.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Moved {
    /// Pools (their capacity rows).
    pub pools: u64,
    /// Counted machines over all pools' tables.
    pub pool_entries: u64,
    /// Machines in the registry.
    pub registry: u64,
    /// Event rows.
    pub events: u64,
    /// Refusal counter rows.
    pub refusals: u64,
}

/// Why a move was refused or failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MoveError {
    /// The target already holds data the move would collide with; nothing was written.
    #[error(
        "the target database already {what}; nothing was moved. Move a host into a fleet database that does not count its pools yet (a new database, or a fleet of other products)"
    )]
    Conflict {
        /// What collides, e.g. "counts machines in pool 1b4e…".
        what: String,
    },
    /// Reading the source or writing the target failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn src_err(path: &Path) -> impl Fn(rusqlite::Error) -> MoveError + '_ {
    move |e| {
        MoveError::Store(StoreError::Open {
            path: path.display().to_string(),
            source: Arc::new(e),
        })
    }
}

fn pg_err(operation: &'static str) -> impl Fn(tokio_postgres::Error) -> MoveError {
    move |e| {
        MoveError::Store(StoreError::Backend {
            operation,
            source: Arc::new(e),
        })
    }
}

fn uuid(bytes: &[u8]) -> Uuid {
    Uuid::from_slice(bytes).unwrap_or_default()
}

/// Totals to move, for a progress bar: (rows of all tables).
pub fn count_rows(sqlite: &Path) -> Result<u64, MoveError> {
    // Checks the schema version too (a database of another Tally version is refused).
    drop(crate::sqlite::SqliteStore::open_read_only(sqlite)?);
    let conn = open(sqlite)?;
    let mut total = 0;
    for table in [
        "pool_capacity",
        "pool_entries",
        "registry",
        "events",
        "refusals",
    ] {
        let n: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .map_err(src_err(sqlite))?;
        total += u64::try_from(n).unwrap_or(0);
    }
    Ok(total)
}

fn open(sqlite: &Path) -> Result<Connection, MoveError> {
    Connection::open_with_flags(
        sqlite,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(src_err(sqlite))
}

/// Moves the embedded database at `sqlite` into the fleet database of `pool`, naming
/// `served_by` as the host of the moved rows; `progress(rows_done)` after every page.
pub async fn sqlite_to_postgres(
    sqlite: &Path,
    pool: &Pool,
    served_by: &str,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Moved, MoveError> {
    drop(crate::sqlite::SqliteStore::open_read_only(sqlite)?);
    let src = Arc::new(Mutex::new(open(sqlite)?));
    let mut client = pool.get().await.map_err(|e| {
        MoveError::Store(StoreError::Backend {
            operation: "connect",
            source: Arc::new(e),
        })
    })?;
    crate::migrate::postgres(
        &mut client,
        crate::postgres::MIGRATIONS,
        crate::postgres::MIGRATION_LOCK,
    )
    .await
    .map_err(StoreError::from)?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(pg_err("begin"))?;
    let mut moved = Moved::default();
    let mut done = 0u64;

    // Pools: created if new, then locked, then checked empty in the target.
    let pools: Vec<(Uuid, i32)> = read(&src, sqlite, |c| {
        let mut st = c.prepare("SELECT pool, capacity FROM pool_capacity ORDER BY pool")?;
        let rows = st.query_map([], |r| {
            Ok((uuid(&r.get::<_, Vec<u8>>(0)?), r.get::<_, i32>(1)?))
        })?;
        rows.collect()
    })
    .await?;
    let (ids, caps): (Vec<Uuid>, Vec<i32>) = pools.iter().copied().unzip();
    tx.execute(
        "INSERT INTO pools (pool, capacity) SELECT * FROM unnest($1::uuid[], $2::int4[]) \
         ON CONFLICT (pool) DO UPDATE SET capacity = GREATEST(pools.capacity, EXCLUDED.capacity)",
        &[&ids, &caps],
    )
    .await
    .map_err(pg_err("write pools"))?;
    tx.query(
        "SELECT pool FROM pools WHERE pool = ANY($1) ORDER BY pool FOR UPDATE",
        &[&ids],
    )
    .await
    .map_err(pg_err("lock pools"))?;
    if let Some(row) = tx
        .query_opt(
            "SELECT pool FROM pool_entries WHERE pool = ANY($1) LIMIT 1",
            &[&ids],
        )
        .await
        .map_err(pg_err("check pools"))?
    {
        let pool: Uuid = row.get(0);
        return Err(MoveError::Conflict {
            what: format!("counts machines in pool {pool}"),
        });
    }
    moved.pools = ids.len() as u64;
    done += moved.pools;
    progress(done);

    // The pools' tables.
    let mut after: Vec<u8> = Vec::new();
    let mut after_pool: Vec<u8> = Vec::new();
    loop {
        let (a, ap) = (after.clone(), after_pool.clone());
        let rows: Vec<(Vec<u8>, Vec<u8>, i64)> = read(&src, sqlite, move |c| {
            let mut st = c.prepare(
                "SELECT pool, cmid, last_seen FROM pool_entries WHERE (pool, cmid) > (?1, ?2) \
                 ORDER BY pool, cmid LIMIT ?3",
            )?;
            let rows = st.query_map(rusqlite::params![ap, a, PAGE as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect()
        })
        .await?;
        let Some(last) = rows.last() else { break };
        after_pool = last.0.clone();
        after = last.1.clone();
        let pools: Vec<Uuid> = rows.iter().map(|r| uuid(&r.0)).collect();
        let cmids: Vec<Uuid> = rows.iter().map(|r| uuid(&r.1)).collect();
        let seen: Vec<i64> = rows.iter().map(|r| r.2).collect();
        tx.execute(
            "INSERT INTO pool_entries (pool, cmid, last_seen) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int8[])",
            &[&pools, &cmids, &seen],
        )
        .await
        .map_err(pg_err("write pool entries"))?;
        moved.pool_entries += rows.len() as u64;
        done += rows.len() as u64;
        progress(done);
    }

    // The registry, checked against the target's machines page by page.
    let mut after: Vec<u8> = Vec::new();
    loop {
        let a = after.clone();
        let rows: Vec<RegistryRow> = read(&src, sqlite, move |c| {
            let mut st = c.prepare(
                "SELECT cmid, machine_name, sku, pool, license_state, first_seen, last_seen, \
                 last_result, last_count, activated, requests, sequence, hardware_digest, clones \
                 FROM registry WHERE cmid > ?1 ORDER BY cmid LIMIT ?2",
            )?;
            let rows = st.query_map(rusqlite::params![a, PAGE as i64], RegistryRow::read)?;
            rows.collect()
        })
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.cmid.as_bytes().to_vec();
        let col = RegistryColumns::of(&rows);
        if let Some(row) = tx
            .query_opt(
                "SELECT machine_name FROM registry WHERE cmid = ANY($1) LIMIT 1",
                &[&col.cmid],
            )
            .await
            .map_err(pg_err("check registry"))?
        {
            let name: String = row.get(0);
            return Err(MoveError::Conflict {
                what: format!("has machine {name:?} in its registry"),
            });
        }
        let served: Vec<&str> = vec![served_by; rows.len()];
        tx.execute(
            "INSERT INTO registry (cmid, machine_name, sku, pool, license_state, first_seen, \
             last_seen, last_result, last_count, activated, requests, sequence, hardware_digest, \
             clones, served_by) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::int2[], \
             $6::int8[], $7::int8[], $8::int8[], $9::int4[], $10::bool[], $11::int8[], \
             $12::int8[], $13::bytea[], $14::int4[], $15::text[])",
            &[
                &col.cmid,
                &col.machine_name,
                &col.sku,
                &col.pool,
                &col.license_state,
                &col.first_seen,
                &col.last_seen,
                &col.last_result,
                &col.last_count,
                &col.activated,
                &col.requests,
                &col.sequence,
                &col.hardware_digest,
                &col.clones,
                &served,
            ],
        )
        .await
        .map_err(pg_err("write registry"))?;
        moved.registry += rows.len() as u64;
        done += rows.len() as u64;
        progress(done);
    }

    // Events, in id order (the target gives them new ids after its own).
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, i64, i64, String, String, String)> = read(&src, sqlite, move |c| {
            let mut st = c.prepare(
                "SELECT id, at, event_id, level, message, data FROM events WHERE id > ?1 \
                 ORDER BY id LIMIT ?2",
            )?;
            let rows = st.query_map(rusqlite::params![after, PAGE as i64], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?;
            rows.collect()
        })
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.0;
        let at: Vec<i64> = rows.iter().map(|r| r.1).collect();
        let id: Vec<i32> = rows
            .iter()
            .map(|r| i32::try_from(r.2).unwrap_or(0))
            .collect();
        let level: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
        let message: Vec<&str> = rows.iter().map(|r| r.4.as_str()).collect();
        let data: Vec<&str> = rows.iter().map(|r| r.5.as_str()).collect();
        let host: Vec<&str> = vec![served_by; rows.len()];
        tx.execute(
            "INSERT INTO events (at, event_id, level, message, data, host) \
             SELECT a, e, l, m, d::jsonb, h FROM unnest($1::int8[], $2::int4[], $3::text[], \
             $4::text[], $5::text[], $6::text[]) AS u(a, e, l, m, d, h)",
            &[&at, &id, &level, &message, &data, &host],
        )
        .await
        .map_err(pg_err("write events"))?;
        moved.events += rows.len() as u64;
        done += rows.len() as u64;
        progress(done);
    }

    // Refusal counters (small: one row per day, edition and result): added to the target's.
    let rows: Vec<(i32, Vec<u8>, i64, i64, i64)> = read(&src, sqlite, |c| {
        let mut st = c.prepare("SELECT day, sku, result, requests, last_at FROM refusals")?;
        let rows = st.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        rows.collect()
    })
    .await?;
    for (day, sku, result, requests, last_at) in &rows {
        tx.execute(
            "INSERT INTO refusals (day, sku, result, requests, last_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (day, sku, result) DO UPDATE SET \
             requests = refusals.requests + EXCLUDED.requests, \
             last_at = GREATEST(refusals.last_at, EXCLUDED.last_at)",
            &[day, &uuid(sku), result, requests, last_at],
        )
        .await
        .map_err(pg_err("write refusals"))?;
    }
    moved.refusals = rows.len() as u64;
    done += moved.refusals;
    progress(done);

    tx.commit().await.map_err(pg_err("commit"))?;
    Ok(moved)
}

/// Runs `f` on the source connection off the async threads.
async fn read<T: Send + 'static>(
    src: &Arc<Mutex<Connection>>,
    path: &Path,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, MoveError> {
    let src = src.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let conn = src
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&conn)
    })
    .await
    .map_err(|e| {
        MoveError::Store(StoreError::Backend {
            operation: "read source",
            source: Arc::new(e),
        })
    })?;
    joined.map_err(src_err(path))
}

struct RegistryRow {
    cmid: Uuid,
    machine_name: String,
    sku: Uuid,
    pool: Uuid,
    license_state: i16,
    first_seen: i64,
    last_seen: i64,
    last_result: i64,
    last_count: i32,
    activated: bool,
    requests: i64,
    sequence: Option<i64>,
    hardware_digest: Option<Vec<u8>>,
    clones: i32,
}

impl RegistryRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            cmid: uuid(&r.get::<_, Vec<u8>>(0)?),
            machine_name: r.get(1)?,
            sku: uuid(&r.get::<_, Vec<u8>>(2)?),
            pool: uuid(&r.get::<_, Vec<u8>>(3)?),
            license_state: r.get(4)?,
            first_seen: r.get(5)?,
            last_seen: r.get(6)?,
            last_result: r.get(7)?,
            last_count: r.get(8)?,
            activated: r.get::<_, i64>(9)? != 0,
            requests: r.get(10)?,
            sequence: r.get(11)?,
            hardware_digest: r.get(12)?,
            clones: r.get(13)?,
        })
    }
}

/// A page of registry rows as one array per column, for `unnest`.
struct RegistryColumns {
    cmid: Vec<Uuid>,
    machine_name: Vec<String>,
    sku: Vec<Uuid>,
    pool: Vec<Uuid>,
    license_state: Vec<i16>,
    first_seen: Vec<i64>,
    last_seen: Vec<i64>,
    last_result: Vec<i64>,
    last_count: Vec<i32>,
    activated: Vec<bool>,
    requests: Vec<i64>,
    sequence: Vec<Option<i64>>,
    hardware_digest: Vec<Option<Vec<u8>>>,
    clones: Vec<i32>,
}

impl RegistryColumns {
    fn of(rows: &[RegistryRow]) -> Self {
        Self {
            cmid: rows.iter().map(|r| r.cmid).collect(),
            machine_name: rows.iter().map(|r| r.machine_name.clone()).collect(),
            sku: rows.iter().map(|r| r.sku).collect(),
            pool: rows.iter().map(|r| r.pool).collect(),
            license_state: rows.iter().map(|r| r.license_state).collect(),
            first_seen: rows.iter().map(|r| r.first_seen).collect(),
            last_seen: rows.iter().map(|r| r.last_seen).collect(),
            last_result: rows.iter().map(|r| r.last_result).collect(),
            last_count: rows.iter().map(|r| r.last_count).collect(),
            activated: rows.iter().map(|r| r.activated).collect(),
            requests: rows.iter().map(|r| r.requests).collect(),
            sequence: rows.iter().map(|r| r.sequence).collect(),
            hardware_digest: rows.iter().map(|r| r.hardware_digest.clone()).collect(),
            clones: rows.iter().map(|r| r.clones).collect(),
        }
    }
}
