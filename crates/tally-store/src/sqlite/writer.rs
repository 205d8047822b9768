//! The writer thread: the one connection that writes the database, doing group commit.
//!
//! [`Store::commit`](crate::Store::commit) hands it a job and waits; the thread takes every job
//! already queued (up to [`MAX_BATCH`]), applies them in one transaction and commits once. While
//! one fsync runs, the next batch queues up, so throughput grows with concurrency instead of
//! paying one fsync per request.
//!
//! As the one writer, its counting tables are exactly what is stored, so it counts on them inside
//! each transaction. After a failed transaction they are dropped and reloaded from the database,
//! so nothing a failed commit counted survives (no phantom counts), and the connection is opened
//! again, so a cause that went away (a full disk, a read-only file made writable) stops mattering
//! without a restart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

use rusqlite::{Connection, params};
use tally_core::clones::{self, ClonePolicy, Verdict};
use tally_core::counting::{CountTables, TableChange};
use tally_core::host::{Changes, Counted};
use tally_core::time::Timestamp;
use tally_proto::ResultCode;
use tokio::sync::oneshot;

use super::{Durability, backend, installations, open_connection, read_tables};
use crate::health::Health;
use crate::ticket::Ticket;
use crate::{Event, StoreError, StoreOptions};

/// Most requests committed in one transaction.
pub const MAX_BATCH: usize = 512;

pub(super) enum Work {
    Changes(Box<Changes>),
    Events(Vec<Event>),
    /// Retention: delete events older than this (run alone, not in a batch).
    PruneEvents(Timestamp),
    /// Retention: delete registry rows not seen since this (run alone).
    PruneRegistry(Timestamp),
    /// X5: the clock was trusted at this time: move the mark, pull future stamps back (alone).
    TrustClock(Timestamp),
}

impl Work {
    fn runs_alone(&self) -> bool {
        matches!(
            self,
            Self::PruneEvents(_) | Self::PruneRegistry(_) | Self::TrustClock(_)
        )
    }
}

/// What the writer answers: the count committed (changes), rows deleted (prune), or nothing.
#[derive(Clone, Copy, Debug, Default)]
pub(super) enum Answer {
    #[default]
    Done,
    Counted(Counted),
    Deleted(u64),
}

pub(super) struct Job {
    pub(super) work: Work,
    pub(super) done: oneshot::Sender<Result<Answer, StoreError>>,
    /// Claimed just before the batch is applied; abandoned by the request at its deadline
    /// (`crate::ticket`, shared with the PostgreSQL batcher).
    pub(super) ticket: Arc<Ticket>,
}

/// The writer's state, owned by its thread.
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) path: PathBuf,
    pub(super) durability: Durability,
    pub(super) options: StoreOptions,
    pub(super) health: Arc<Health>,
    pub(super) full: Arc<AtomicBool>,
    /// The counting tables as stored; `None` after a failure, reloaded in the next batch.
    tables: Option<CountTables>,
    /// Machines in the registry (kept by the writer, which is the only one adding them).
    registry_len: Option<u64>,
    /// The event log's cap (issue 21; `crate::event_cap`).
    event_cap: crate::event_cap::Tracker,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        path: PathBuf,
        durability: Durability,
        options: StoreOptions,
        health: Arc<Health>,
        full: Arc<AtomicBool>,
        event_cap: Arc<crate::event_cap::Shared>,
    ) -> Self {
        Self {
            event_cap: crate::event_cap::Tracker::new(options.event_cap, event_cap),
            conn,
            path,
            durability,
            options,
            health,
            full,
            tables: None,
            registry_len: None,
        }
    }

    /// Runs until every sender is gone.
    pub(super) fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            if first.work.runs_alone() {
                self.run_alone(first);
                continue;
            }
            let mut batch = vec![first];
            let mut deferred = None;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) if job.work.runs_alone() => {
                        deferred = Some(job);
                        break;
                    }
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            // One outcome per request: a job whose request gave up at its deadline is never
            // applied; the others are this transaction's from here.
            batch.retain(|j| j.ticket.claim());
            if batch.is_empty() {
                if let Some(job) = deferred {
                    self.run_alone(job);
                }
                continue;
            }
            match self.apply_batch(&mut batch) {
                Ok(answers) => {
                    self.health.ok();
                    let (written, now) = written_of(&batch);
                    for (job, answer) in batch.into_iter().zip(answers) {
                        // The requester may have gone (connection closed); nothing to tell it.
                        let _ = job.done.send(Ok(answer));
                    }
                    self.event_cap.wrote(written);
                    if self.event_cap.due() {
                        self.enforce_event_cap(now);
                    }
                }
                Err(error) => {
                    self.health.failed(&error);
                    self.recover();
                    for job in batch {
                        let _ = job.done.send(Err(error.clone()));
                    }
                }
            }
            if let Some(job) = deferred {
                self.run_alone(job);
            }
        }
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

    fn run_alone(&mut self, job: Job) {
        let result = match job.work {
            Work::PruneEvents(before) => {
                let deleted = self
                    .conn
                    .execute("DELETE FROM events WHERE at < ?1", params![before.millis()])
                    .map(|n| Answer::Deleted(n as u64))
                    .map_err(backend("prune events"));
                // Retention may have ended an episode at the cap.
                self.enforce_event_cap(tally_core::time::Clock::now(
                    &tally_core::time::SystemClock,
                ));
                deleted
            }
            Work::PruneRegistry(before) => {
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
            Work::TrustClock(at) => {
                let pulled =
                    super::clock::trust(&mut self.conn, at).map_err(backend("trust clock"));
                if !matches!(pulled, Ok(0)) {
                    // The counting tables reload with the pulled-back times.
                    self.tables = None;
                }
                pulled.map(Answer::Deleted)
            }
            Work::Changes(_) | Work::Events(_) => Ok(Answer::Done),
        };
        let _ = job.done.send(result);
    }

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
        let mut batch_len = registry_len;
        let mut newly_full = false;
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch.iter_mut() {
            match &mut job.work {
                Work::Changes(changes) => {
                    // X6: judged on the registry row as stored, before anything is counted.
                    let (verdict, seen) = match changes.registry.installation {
                        Some(ext)
                            if changes.counting.is_some()
                                && !tally_core::bench::is_bench_pool(changes.registry.pool) =>
                        {
                            let seen = installations::seen(&tx, changes.registry.cmid)
                                .map_err(backend("read registry"))?;
                            let at = changes.registry.seen_at;
                            (Some(clones::judge(seen.as_ref(), &ext, at)), seen)
                        }
                        _ => (None, None),
                    };
                    let clone = verdict.is_some_and(Verdict::is_clone);
                    let clone_event = clone.then(|| {
                        crate::clone_event(
                            changes,
                            seen.and_then(|s| s.sequence).unwrap_or(0),
                            seen.and_then(|s| s.hardware_digest),
                        )
                    });
                    if clone && changes.clone_policy == ClonePolicy::Apart {
                        // Counted apart: this copy counts nothing under this CMID; it takes a
                        // new one and asks again.
                        changes.counting = None;
                        changes.registry.result = ResultCode::CLONE_DETECTED;
                        let mut counted = changes.settle(0);
                        counted.clone = true;
                        record_request(&tx, changes, verdict, clone_event.as_ref())?;
                        answers.push(Answer::Counted(counted));
                        continue;
                    }
                    let Some(req) = changes.counting else {
                        // A refusal adds to its day's aggregate: bounded storage whatever is sent.
                        write_refusal(&tx, changes).map_err(backend("write refusal"))?;
                        answers.push(Answer::Counted(changes.settle(0)));
                        continue;
                    };
                    let (count, change) = tables.apply(&req);
                    write_table_change(&tx, &change).map_err(backend("write"))?;
                    let counted = changes.settle(count);
                    let at_cap = batch_len >= self.options.registry_cap;
                    match write_registry(&tx, changes, !at_cap).map_err(backend("write"))? {
                        RegistryWrite::Inserted => batch_len += 1,
                        RegistryWrite::Updated => {}
                        RegistryWrite::Skipped => newly_full |= !self.full.load(Ordering::Relaxed),
                    }
                    record_request(&tx, changes, verdict, clone_event.as_ref())?;
                    let mut counted = counted;
                    counted.clone = clone;
                    answers.push(Answer::Counted(counted));
                }
                Work::Events(events) => {
                    for e in events.iter() {
                        insert_event(&tx, e).map_err(backend("write event"))?;
                    }
                    answers.push(Answer::Done);
                }
                Work::PruneEvents(_) | Work::PruneRegistry(_) | Work::TrustClock(_) => {
                    answers.push(Answer::Done);
                }
            }
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
        Ok(answers)
    }
}

/// What every counted or clone-refused request writes after its registry row: the installation
/// note (X6), event 12290 with the activation it describes (R27), and the clone's event 1009.
fn record_request(
    conn: &Connection,
    changes: &Changes,
    verdict: Option<Verdict>,
    clone_event: Option<&Event>,
) -> Result<(), StoreError> {
    if let Some(v) = verdict {
        installations::note(conn, changes, v).map_err(backend("write"))?;
    }
    insert_event(conn, &crate::activation_event(changes)).map_err(backend("write event"))?;
    if let Some(e) = clone_event {
        insert_event(conn, e).map_err(backend("write event"))?;
    }
    Ok(())
}

impl Writer {
    /// One step of the event cap (`crate::event_cap`): reads the id span and deletes the oldest
    /// rows over the cap, with event 1011 when an episode starts, in one transaction. A failure
    /// is logged and tried again after the next batch; it never fails a request.
    fn enforce_event_cap(&mut self, now: Timestamp) {
        let step = (|| -> rusqlite::Result<Option<(u64, bool)>> {
            let tx = self.conn.transaction()?;
            let span: (Option<i64>, Option<i64>) = tx.query_row(
                "SELECT (SELECT min(id) FROM events), (SELECT max(id) FROM events)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let span = span.0.zip(span.1);
            let Some(prune) = self.event_cap.plan(span, now) else {
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
            Ok(Some((deleted, started))) => self.event_cap.pruned(deleted, started),
            Ok(None) => {}
            Err(error) => {
                self.event_cap.failed();
                tracing::warn!(%error, "cannot delete the oldest events for the event cap");
            }
        }
    }
}

/// Rows a committed batch added to the event log (at most: a refusal adds none) and its latest
/// time.
fn written_of(batch: &[Job]) -> (u64, Timestamp) {
    let mut rows = 0u64;
    let mut now = Timestamp(0);
    for job in batch {
        match &job.work {
            Work::Changes(c) => {
                rows += 1;
                now = now.max(c.registry.seen_at);
            }
            Work::Events(list) => {
                rows += list.len() as u64;
                if let Some(at) = list.iter().map(|e| e.at).max() {
                    now = now.max(at);
                }
            }
            _ => {}
        }
    }
    (rows, now)
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

fn write_refusal(conn: &Connection, changes: &Changes) -> rusqlite::Result<()> {
    let (day, sku, result) = crate::refusal_key(changes);
    conn.prepare_cached(
        "INSERT INTO refusals (day, sku, result, requests, last_at) VALUES (?1, ?2, ?3, 1, ?4)
         ON CONFLICT (day, sku, result) DO UPDATE SET
             requests = requests + 1, last_at = max(last_at, excluded.last_at)",
    )?
    .execute(params![
        day,
        sku.as_bytes(),
        result,
        changes.registry.seen_at.millis()
    ])?;
    Ok(())
}

fn write_table_change(conn: &Connection, t: &TableChange) -> rusqlite::Result<()> {
    if t.capacity_changed {
        conn.prepare_cached(
            "INSERT INTO pool_capacity (pool, capacity) VALUES (?1, ?2)
             ON CONFLICT (pool) DO UPDATE SET capacity = max(capacity, excluded.capacity)",
        )?
        .execute(params![t.pool.as_bytes(), t.capacity])?;
    }
    conn.prepare_cached(
        "INSERT INTO pool_entries (pool, cmid, last_seen) VALUES (?1, ?2, ?3)
         ON CONFLICT (pool, cmid) DO UPDATE SET last_seen = excluded.last_seen",
    )?
    .execute(params![
        t.pool.as_bytes(),
        t.upsert.0.as_bytes(),
        t.upsert.1.millis()
    ])?;
    // X5: entries stamped in the future, pulled back to the request's time.
    let mut pull_back = conn
        .prepare_cached("UPDATE pool_entries SET last_seen = ?3 WHERE pool = ?1 AND cmid = ?2")?;
    for (cmid, at) in &t.pulled_back {
        pull_back.execute(params![t.pool.as_bytes(), cmid.as_bytes(), at.millis()])?;
    }
    let mut delete =
        conn.prepare_cached("DELETE FROM pool_entries WHERE pool = ?1 AND cmid = ?2")?;
    for cmid in &t.removed {
        delete.execute(params![t.pool.as_bytes(), cmid.as_bytes()])?;
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
