//! The writer thread's backend: the one connection that writes the database.
//!
//! The thread runs the group-commit engine (`crate::group_commit`): every job already queued
//! (up to [`MAX_BATCH`]) is applied in one transaction and committed once. While one fsync runs,
//! the next batch queues up, so throughput grows with concurrency instead of paying one fsync
//! per request.
//!
//! As the one writer, its counting tables are exactly what is stored, so it counts on them inside
//! each transaction. After a failed transaction they are dropped and reloaded from the database,
//! so nothing a failed commit counted survives (no phantom counts), and the connection is opened
//! again, so a cause that went away (a full disk, a read-only file made writable) stops mattering
//! without a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::{Connection, params};
use tally_core::counting::CountTables;
use tally_core::host::Changes;
use tally_core::time::Timestamp;

use super::{Durability, backend, installations, open_connection, read_tables};
use crate::event_cap::Tracker;
use crate::group_commit::diff::{self, Judge, PoolDiff};
use crate::group_commit::{self, Answer, Backend, Claim};
use crate::{Event, StoreError, StoreOptions};

pub use crate::group_commit::MAX_BATCH;

/// Maintenance the writer runs alone, outside any batch.
pub(super) enum Alone {
    /// Retention: delete events older than this.
    PruneEvents(Timestamp),
    /// Retention: delete registry rows not seen since this.
    PruneRegistry(Timestamp),
    /// X5: the clock was trusted at this time: move the mark, pull future stamps back.
    TrustClock(Timestamp),
    /// `tally bench --seed-registry`: synthetic machines into a scratch registry.
    Seed(super::seed::Seed),
}

pub(super) type Work = group_commit::Work<Alone>;
pub(super) type Job = group_commit::Job<Alone>;

/// The writer's state, owned by its thread.
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    pub(super) durability: Durability,
    pub(super) options: StoreOptions,
    pub(super) full: Arc<AtomicBool>,
    /// The counting tables as stored; `None` after a failure, reloaded in the next batch.
    tables: Option<CountTables>,
    /// Machines in the registry (kept by the writer, which is the only one adding them).
    registry_len: Option<u64>,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        path: PathBuf,
        durability: Durability,
        options: StoreOptions,
        full: Arc<AtomicBool>,
    ) -> Self {
        Self {
            conn,
            path,
            durability,
            options,
            full,
            tables: None,
            registry_len: None,
        }
    }
}

impl Backend for Writer {
    type Alone = Alone;

    async fn commit(
        &mut self,
        batch: &mut Vec<Job>,
        claim: &mut Claim,
    ) -> Result<Vec<Answer>, StoreError> {
        // One outcome per request: nothing happens before the claim (no I/O to wait for), so
        // the jobs are claimed first and are this transaction's from here.
        claim.take(batch);
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.apply_batch(batch)
    }

    /// SQLite reports no failure that another try of the same batch would fix.
    fn retryable(&self, _error: &StoreError) -> bool {
        false
    }

    /// Forgets what a failed transaction may have left in memory and opens the connection
    /// again (a file made writable, space freed: the next batch works).
    fn recover(&mut self) {
        self.tables = None;
        self.registry_len = None;
        match open_connection(&self.path, self.durability) {
            Ok(conn) => self.conn = conn,
            Err(error) => tracing::debug!(%error, "could not reopen the database yet"),
        }
    }

    async fn run_alone(&mut self, work: Alone, cap: &mut Tracker) -> Result<Answer, StoreError> {
        match work {
            Alone::PruneEvents(before) => {
                let deleted = self
                    .conn
                    .execute("DELETE FROM events WHERE at < ?1", params![before.millis()])
                    .map(|n| Answer::Deleted(n as u64))
                    .map_err(backend("prune events"));
                // Retention may have ended an episode at the cap.
                self.cap_step(
                    cap,
                    tally_core::time::Clock::now(&tally_core::time::SystemClock),
                );
                deleted
            }
            Alone::PruneRegistry(before) => {
                // Both tables in one transaction, so the writer's count stays right.
                let deleted = self
                    .conn
                    .transaction()
                    .and_then(|tx| {
                        let mut n = 0u64;
                        for table in ["registry", "bench_registry"] {
                            n += tx.execute(
                                &format!("DELETE FROM {table} WHERE last_seen < ?1"),
                                params![before.millis()],
                            )? as u64;
                        }
                        tx.commit().map(|()| n)
                    })
                    .map_err(backend("prune registry"));
                if let (Ok(n), Some(len)) = (&deleted, self.registry_len.as_mut()) {
                    *len = len.saturating_sub(*n);
                }
                if deleted.is_ok() {
                    self.full.store(false, Ordering::Relaxed);
                }
                deleted.map(Answer::Deleted)
            }
            Alone::TrustClock(at) => {
                let pulled =
                    super::clock::trust(&mut self.conn, at).map_err(backend("trust clock"));
                if !matches!(pulled, Ok(0)) {
                    // The counting tables reload with the pulled-back times.
                    self.tables = None;
                }
                pulled.map(Answer::Deleted)
            }
            Alone::Seed(seed) => {
                let rows = seed.rows;
                let seeded = super::seed::run(&mut self.conn, seed);
                // A fresh connection drops the seeding's pragmas; the registry's size is read
                // again by the next batch.
                self.recover();
                seeded.map(|()| Answer::Deleted(rows))
            }
        }
    }

    async fn enforce_event_cap(&mut self, cap: &mut Tracker, now: Timestamp) {
        self.cap_step(cap, now);
    }
}

impl Writer {
    fn apply_batch(&mut self, batch: &mut [Job]) -> Result<Vec<Answer>, StoreError> {
        let tx = self.conn.transaction().map_err(backend("begin"))?;
        let tables = match &mut self.tables {
            Some(t) => t,
            None => self.tables.insert(CountTables::from_snapshots(
                read_tables(&tx).map_err(backend("load tables"))?,
            )),
        };
        let registry_len = match self.registry_len {
            Some(n) => n,
            // The cap bounds storage: bench machines count towards it too.
            None => tx
                .query_row(
                    "SELECT (SELECT count(*) FROM registry) + (SELECT count(*) FROM bench_registry)",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map(|n| n.max(0) as u64)
                .map_err(backend("count registry"))?,
        };
        // X6: the registry rows of the installations the batch judges, as stored.
        let mut seen = HashMap::new();
        for cmid in Judge::wanted(changes_of(batch)) {
            if let Some(s) = installations::seen(&tx, cmid).map_err(backend("read registry"))? {
                seen.insert(cmid, s);
            }
        }
        let diff = diff::count(
            batch.iter_mut().map(|j| &mut j.work),
            tables,
            Judge::new(seen),
        );
        for pool in &diff.pools {
            write_pool_diff(&tx, pool).map_err(backend("write"))?;
        }
        let mut batch_len = registry_len;
        let mut newly_full = false;
        for changes in changes_of(batch).filter(|c| c.counting.is_some()) {
            let at_cap = batch_len >= self.options.registry_cap;
            match write_registry(&tx, changes, !at_cap).map_err(backend("write"))? {
                RegistryWrite::Inserted => batch_len += 1,
                RegistryWrite::Updated => {}
                RegistryWrite::Skipped => newly_full |= !self.full.load(Ordering::Relaxed),
            }
        }
        // After the registry rows (new machines' rows exist by then).
        installations::note(&tx, &diff.notes).map_err(backend("write"))?;
        for (key, (requests, last_at)) in &diff.refusals {
            write_refusal(&tx, *key, *requests, *last_at).map_err(backend("write refusal"))?;
        }
        for e in &diff.events {
            insert_event(&tx, e).map_err(backend("write event"))?;
        }
        if newly_full {
            let event = crate::registry_full_event(now_of(batch), self.options.registry_cap);
            insert_event(&tx, &event).map_err(backend("write event"))?;
        }
        tx.commit().map_err(backend("commit"))?;
        self.registry_len = Some(batch_len);
        if newly_full {
            self.full.store(true, Ordering::Relaxed);
            tracing::warn!(
                cap = self.options.registry_cap,
                "registry full: new machines are counted but not registered (event 1005)"
            );
        }
        Ok(diff.answers)
    }
}

/// The requests of a batch, in order.
fn changes_of(batch: &[Job]) -> impl Iterator<Item = &Changes> {
    batch.iter().filter_map(|j| match &j.work {
        Work::Changes(c) => Some(&**c),
        _ => None,
    })
}

impl Writer {
    /// One step of the event cap (`crate::event_cap`): reads the id span and deletes the oldest
    /// rows over the cap, with event 1011 when an episode starts, in one transaction. A failure
    /// is logged and tried again after the next batch; it never fails a request.
    fn cap_step(&mut self, cap: &mut Tracker, now: Timestamp) {
        let step = (|| -> rusqlite::Result<Option<(u64, bool)>> {
            let tx = self.conn.transaction()?;
            let span: (Option<i64>, Option<i64>) = tx.query_row(
                "SELECT (SELECT min(id) FROM events), (SELECT max(id) FROM events)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let span = span.0.zip(span.1);
            let Some(prune) = cap.plan(span, now) else {
                return Ok(None);
            };
            let deleted = tx.execute("DELETE FROM events WHERE id < ?1", params![prune.below])?;
            if let Some(e) = &prune.event {
                insert_event(&tx, e)?;
            }
            tx.commit()?;
            Ok(Some((deleted as u64, prune.event.is_some())))
        })();
        match step {
            Ok(Some((deleted, started))) => cap.pruned(deleted, started),
            Ok(None) => {}
            Err(error) => {
                cap.failed();
                tracing::warn!(%error, "cannot delete the oldest events for the event cap");
            }
        }
    }
}

/// The latest request time in a batch (for the events the writer adds itself).
fn now_of(batch: &[Job]) -> Timestamp {
    batch
        .iter()
        .filter_map(|j| match &j.work {
            Work::Changes(c) => Some(c.registry.seen_at),
            _ => None,
        })
        .max()
        .unwrap_or(Timestamp(0))
}

fn write_refusal(
    conn: &Connection,
    (day, sku, result): (i64, uuid::Uuid, u32),
    requests: i64,
    last_at: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO refusals (day, sku, result, requests, last_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (day, sku, result) DO UPDATE SET
             requests = requests + excluded.requests, last_at = max(last_at, excluded.last_at)",
    )?
    .execute(params![day, sku.as_bytes(), result, requests, last_at])?;
    Ok(())
}

/// Writes what a batch changed in one pool's table.
fn write_pool_diff(conn: &Connection, d: &PoolDiff) -> rusqlite::Result<()> {
    if let Some(capacity) = d.capacity {
        conn.prepare_cached(
            "INSERT INTO pool_capacity (pool, capacity) VALUES (?1, ?2)
             ON CONFLICT (pool) DO UPDATE SET capacity = max(capacity, excluded.capacity)",
        )?
        .execute(params![d.pool.as_bytes(), capacity])?;
    }
    let mut upsert = conn.prepare_cached(
        "INSERT INTO pool_entries (pool, cmid, last_seen) VALUES (?1, ?2, ?3)
         ON CONFLICT (pool, cmid) DO UPDATE SET last_seen = excluded.last_seen",
    )?;
    for (cmid, at) in &d.upserts {
        upsert.execute(params![d.pool.as_bytes(), cmid.as_bytes(), at.millis()])?;
    }
    let mut delete =
        conn.prepare_cached("DELETE FROM pool_entries WHERE pool = ?1 AND cmid = ?2")?;
    for cmid in &d.removed {
        delete.execute(params![d.pool.as_bytes(), cmid.as_bytes()])?;
    }
    Ok(())
}

enum RegistryWrite {
    Inserted,
    Updated,
    Skipped,
}

/// The two registry tables' statements: the same SQL on `registry` and on `bench_registry`
/// (a bench request does the same work as a real one, in a table no report reads).
struct RegistrySql {
    /// A renewal of a machine whose name, edition and pool are unchanged (the common case): it
    /// leaves the name index alone (SQLite rewrites the index entries of every column in SET).
    renew: &'static str,
    update: &'static str,
    insert: &'static str,
}

macro_rules! registry_sql {
    ($table:literal) => {
        RegistrySql {
            renew: concat!(
                "UPDATE ",
                $table,
                " SET license_state = ?5, last_seen = max(last_seen, ?6), last_result = ?7,
                 last_count = ?8, activated = ?9, requests = requests + 1
             WHERE cmid = ?1 AND machine_name = ?2 AND sku = ?3 AND pool = ?4"
            ),
            update: concat!(
                "UPDATE ",
                $table,
                " SET machine_name = ?2, sku = ?3, pool = ?4, license_state = ?5,
                 last_seen = max(last_seen, ?6), last_result = ?7, last_count = ?8,
                 activated = ?9, requests = requests + 1
             WHERE cmid = ?1"
            ),
            insert: concat!(
                "INSERT INTO ",
                $table,
                " (cmid, machine_name, sku, pool, license_state, first_seen, last_seen,
                               last_result, last_count, activated, requests)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, 1)"
            ),
        }
    };
}

const REGISTRY: RegistrySql = registry_sql!("registry");
const BENCH_REGISTRY: RegistrySql = registry_sql!("bench_registry");

/// Updates the machine's row, or adds it when `may_insert` (below the cap). Machines of the
/// bench pool go to `bench_registry`.
fn write_registry(
    conn: &Connection,
    changes: &Changes,
    may_insert: bool,
) -> rusqlite::Result<RegistryWrite> {
    let r = &changes.registry;
    let sql = if tally_core::bench::is_bench_pool(r.pool) {
        &BENCH_REGISTRY
    } else {
        &REGISTRY
    };
    let values = params![
        r.cmid.as_bytes(),
        r.machine_name,
        r.sku.as_bytes(),
        r.pool.as_bytes(),
        r.license_state as u8,
        r.seen_at.millis(),
        r.result.0,
        r.count,
        r.activated,
    ];
    for update in [sql.renew, sql.update] {
        if conn.prepare_cached(update)?.execute(values)? > 0 {
            return Ok(RegistryWrite::Updated);
        }
    }
    if !may_insert {
        return Ok(RegistryWrite::Skipped);
    }
    conn.prepare_cached(sql.insert)?.execute(values)?;
    Ok(RegistryWrite::Inserted)
}

pub(super) fn insert_event(conn: &Connection, e: &Event) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO events (at, event_id, level, message, data) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        e.at.millis(),
        e.event_id,
        e.level,
        e.message,
        e.data.to_string()
    ])?;
    Ok(())
}
