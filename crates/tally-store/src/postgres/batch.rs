//! The batcher: one task per host that commits everything queued in one transaction, in two
//! pipelined round trips.
//!
//! 1. `BEGIN`; for each pool the batch counts in (in pool order, the same on every host), the
//!    pool's row `FOR UPDATE`; then the tables of those pools: one pipelined round trip. The
//!    tables are read by a statement of their own, after the locks: under READ COMMITTED each
//!    statement sees what was committed when it starts, so it sees the commit of the host that
//!    held the lock before us (a read joined into the locking statement would not: its snapshot
//!    is taken before the wait, and two hosts would count on the same table).
//! 2. Counting on those tables (sans-I/O, [`CountTables::apply`]), then every write (the pools'
//!    changed entries, the registry rows of the batch as one `unnest` upsert, the events, the
//!    refusal counters) and `COMMIT`, sent as one pipeline.
//!
//! If any statement fails, PostgreSQL aborts the transaction and the pipelined `COMMIT` rolls it
//! back; the batch fails as a whole and nothing of it is counted. The batcher keeps one
//! connection while it works and takes a new one from the pool after an error.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::{Object, Pool};
use futures_util::future::{join, join_all};
use tally_core::counting::{CountTables, PoolSnapshot};
use tally_core::time::Timestamp;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::installations;
use super::outcome::{self, COMMIT_REPLY_TIMEOUT, Resolved, Session};
use super::sql::{
    BENCH_REGISTRY_WRITES, CREATE_POOL, DATABASE_NOW, DELETE_ENTRIES, EventRows, INSERT_EVENTS,
    LOCK_POOL, PoolRows, READ_ENTRIES, REGISTRY_WRITES, RefusalRows, RegistryRows, UPDATE_CAPACITY,
    UPSERT_ENTRIES, UPSERT_REFUSALS,
};
use super::{backend, pool_error};
use crate::event_cap::Tracker;
use crate::group_commit::diff::{self, Judge};
use crate::group_commit::{self, Answer, Backend, Claim};
use crate::{StoreError, TimeSource};

/// The batcher's work: requests and events (nothing runs alone on PostgreSQL: retention and the
/// clock's mark are statements any host may run beside the batches).
pub(super) type Work = group_commit::Work<Infallible>;
pub(super) type Job = group_commit::Job<Infallible>;

/// Below this estimate the registry is counted exactly.
const EXACT_BELOW: f32 = 100_000.0;

/// How often the registry's size estimate is refreshed.
const SIZE_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// The batcher's connection and the server session behind it.
pub(super) struct Conn {
    client: Object,
    session: Session,
}

/// How long the first round trip (locks and reads) may take before the batch gives up on the
/// connection: `lock_timeout` plus a round trip. Nothing is committed then (no `COMMIT` sent).
const FIRST_TRIP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long may pass between claiming a batch's jobs and sending its `COMMIT` (only counting
/// happens between): more means the process was frozen (SIGSTOP, a VM paused), and its work is
/// stale: rolled back, never committed.
const CLAIM_TO_COMMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// `SET LOCAL lock_timeout` of a batch: a pool lock held longer belongs to a stalled or dead
/// host (a batch holds it for milliseconds); PostgreSQL ends that host's session after
/// [`crate::pg::IDLE_IN_TRANSACTION_TIMEOUT`].
pub const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A batch's opening: READ COMMITTED pinned (a server default of REPEATABLE READ or
/// SERIALIZABLE would turn the pool lock's waits into serialization errors), its lock limit.
const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '2s'";

/// The batcher's view of the registry's size. On PostgreSQL the cap is checked against the
/// planner's row estimate (`pg_class.reltuples`), refreshed every [`SIZE_REFRESH`], plus this
/// host's own inserts: approximate by design, so that no fleet-wide counter row serialises every
/// host's commits.
pub(super) struct RegistrySize {
    pub(super) cap: u64,
    pub(super) estimate: u64,
    pub(super) checked: Option<std::time::Instant>,
    pub(super) full: Arc<AtomicBool>,
    /// Set by retention: the estimate is stale, refresh before the next batch.
    pub(super) stale: Arc<AtomicBool>,
    /// Whose clock the batch counts on (X5).
    pub(super) time: TimeSource,
}

impl RegistrySize {
    /// The planner's estimate once the table is large (cheap at any size), an exact count while
    /// it is small or has never been analysed (`reltuples` is -1 then).
    async fn refresh(
        &mut self,
        client: &tokio_postgres::Client,
        served_by: &str,
    ) -> Result<(), StoreError> {
        client
            .execute(outcome::PRUNE_TOKENS, &[&served_by])
            .await
            .map_err(backend("prune batch tokens"))?;
        let estimate: f32 = client
            .query_one(
                "SELECT greatest(reltuples, 0) + (SELECT greatest(reltuples, 0) FROM pg_class
                     WHERE oid = 'bench_registry'::regclass)
                 FROM pg_class WHERE oid = 'registry'::regclass",
                &[],
            )
            .await
            .map_err(backend("estimate registry"))?
            .get(0);
        self.estimate = if estimate < EXACT_BELOW {
            let n: i64 = client
                .query_one(
                    "SELECT (SELECT count(*) FROM registry) + (SELECT count(*) FROM bench_registry)",
                    &[],
                )
                .await
                .map_err(backend("count registry"))?
                .get(0);
            u64::try_from(n).unwrap_or(0)
        } else {
            estimate as u64
        };
        self.checked = Some(std::time::Instant::now());
        Ok(())
    }
}

/// A host's batcher: the engine's backend on PostgreSQL (`crate::group_commit::run`).
pub(super) struct Batcher {
    pub(super) pool: Pool,
    pub(super) conn: Option<Conn>,
    pub(super) served_by: Arc<str>,
    pub(super) size: RegistrySize,
}

impl Backend for Batcher {
    type Alone = Infallible;

    async fn commit(
        &mut self,
        batch: &mut Vec<Job>,
        claim: &mut Claim,
    ) -> Result<Vec<Answer>, StoreError> {
        commit_batch(
            &self.pool,
            &mut self.conn,
            batch,
            &self.served_by,
            &mut self.size,
            claim,
        )
        .await
    }

    /// A serialization failure or a deadlock PostgreSQL reports (the lock order is total, so
    /// rare): nothing committed, and the batch may run again.
    fn retryable(&self, error: &StoreError) -> bool {
        matches!(error, StoreError::Backend { source, .. } if retryable(source))
    }

    /// The connection may be what failed; the next attempt takes a new one.
    fn recover(&mut self) {
        drop_conn(&mut self.conn);
    }

    async fn run_alone(&mut self, work: Infallible, _: &mut Tracker) -> Result<Answer, StoreError> {
        match work {}
    }

    async fn enforce_event_cap(&mut self, cap: &mut Tracker, now: Timestamp) {
        if let Some(c) = self.conn.as_mut() {
            super::event_cap::enforce(&mut c.client, cap, now, &self.served_by).await;
        }
    }
}

/// Closes the batcher's connection for good (never back into the pool: it may be inside a
/// transaction, or broken).
fn drop_conn(conn: &mut Option<Conn>) {
    if let Some(c) = conn.take() {
        drop(deadpool_postgres::Object::take(c.client));
    }
}

fn retryable(source: &Arc<dyn std::error::Error + Send + Sync>) -> bool {
    source
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|c| {
            *c == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                || *c == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
        })
}

/// The statements of a batch, prepared once per connection (deadpool caches them).
pub(super) struct Statements {
    pub(super) lock: tokio_postgres::Statement,
    pub(super) entries: tokio_postgres::Statement,
    pub(super) create_pool: tokio_postgres::Statement,
    pub(super) capacity: tokio_postgres::Statement,
    pub(super) delete_entries: tokio_postgres::Statement,
    pub(super) upsert_entries: tokio_postgres::Statement,
    pub(super) registry: tokio_postgres::Statement,
    pub(super) bench_registry: tokio_postgres::Statement,
    pub(super) events: tokio_postgres::Statement,
    pub(super) refusals: tokio_postgres::Statement,
    pub(super) now: tokio_postgres::Statement,
    pub(super) note_sequences: tokio_postgres::Statement,
    pub(super) note_clones: tokio_postgres::Statement,
    pub(super) token: tokio_postgres::Statement,
}

async fn prepare(client: &Object, may_insert: bool) -> Result<Statements, StoreError> {
    let p = |sql: &'static str| async move {
        client.prepare_cached(sql).await.map_err(backend("prepare"))
    };
    Ok(Statements {
        lock: p(LOCK_POOL).await?,
        entries: p(READ_ENTRIES).await?,
        create_pool: p(CREATE_POOL).await?,
        capacity: p(UPDATE_CAPACITY).await?,
        delete_entries: p(DELETE_ENTRIES).await?,
        upsert_entries: p(UPSERT_ENTRIES).await?,
        registry: p(if may_insert {
            REGISTRY_WRITES.0
        } else {
            REGISTRY_WRITES.1
        })
        .await?,
        bench_registry: p(if may_insert {
            BENCH_REGISTRY_WRITES.0
        } else {
            BENCH_REGISTRY_WRITES.1
        })
        .await?,
        events: p(INSERT_EVENTS).await?,
        refusals: p(UPSERT_REFUSALS).await?,
        now: p(DATABASE_NOW).await?,
        note_sequences: p(installations::NOTE_SEQUENCES).await?,
        note_clones: p(installations::NOTE_CLONES).await?,
        token: p(outcome::INSERT_TOKEN).await?,
    })
}

/// One transaction for the whole batch; returns the answers of the jobs left in `batch` (the
/// claimed ones), in order. Claims the jobs once the pools are locked and read.
async fn commit_batch(
    pool: &Pool,
    conn: &mut Option<Conn>,
    batch: &mut Vec<Job>,
    served_by: &str,
    size: &mut RegistrySize,
    claim: &mut Claim,
) -> Result<Vec<Answer>, StoreError> {
    let c = match conn {
        Some(c) if !c.client.is_closed() => c,
        _ => {
            let client = pool.get().await.map_err(pool_error(pool))?;
            let session = Session::of(&client).await?;
            conn.insert(Conn { client, session })
        }
    };
    let (client, session) = (&c.client, c.session);
    if size.checked.is_none_or(|t| t.elapsed() >= SIZE_REFRESH)
        || size.stale.swap(false, Ordering::Relaxed)
    {
        size.refresh(client, served_by).await?;
    }
    let may_insert = size.estimate < size.cap;
    let st = prepare(client, may_insert).await?;
    let pools = counted_pools(batch);

    // Round trip 1: BEGIN, every pool's lock, their tables, then the database's clock (in this
    // order on the wire: the clock is read once the locks are held, so batches of one pool are
    // stamped in commit order). Bounded: nothing is committed if it does not come back.
    let (before, now) =
        match tokio::time::timeout(FIRST_TRIP_TIMEOUT, lock_and_read(client, &st, &pools)).await {
            Ok(Ok(Some(locked))) => locked,
            Ok(Ok(None)) => {
                // A pool seen for the first time: its row is created on its own (committed before
                // any lock is taken, so every batch locks existing rows in pool order: the lock
                // order is total and hosts cannot deadlock), then the batch starts again.
                let _ = client.batch_execute("ROLLBACK").await;
                client
                    .execute(&st.create_pool, &[&pools])
                    .await
                    .map_err(backend("create pool"))?;
                match tokio::time::timeout(FIRST_TRIP_TIMEOUT, lock_and_read(client, &st, &pools))
                    .await
                {
                    Ok(Ok(Some(locked))) => locked,
                    Ok(Ok(None)) => {
                        let _ = client.batch_execute("ROLLBACK").await;
                        return Err(StoreError::Backend {
                            operation: "create pool",
                            source: Arc::new(std::io::Error::other(
                                "pool row missing after insert",
                            )),
                        });
                    }
                    Ok(Err(e)) => return Err(rollback(client, e).await),
                    Err(_) => return Err(first_trip_timeout()),
                }
            }
            Ok(Err(e)) => return Err(rollback(client, e).await),
            Err(_) => return Err(first_trip_timeout()),
        };

    // X6: the installations' registry rows, read under the pool locks (no round trip when the
    // batch has no version-2 request).
    let judge = match read_judge(client, batch).await {
        Ok(j) => j,
        Err(e) => return Err(rollback(client, e).await),
    };

    // One outcome per request: from here the jobs are this transaction's, unless their requests
    // gave up first. A job whose deadline passed is never counted or committed.
    claim.take(batch);
    let claimed_at = std::time::Instant::now();
    if batch.is_empty() {
        let _ = client.batch_execute("ROLLBACK").await;
        return Ok(Vec::new());
    }
    // X5: the fleet counts, expires and stamps on one clock, the database's; no host's clock
    // can expire or immortalise another's entries.
    if size.time == TimeSource::Database {
        for job in batch.iter_mut() {
            match &mut job.work {
                Work::Changes(changes) => changes.restamp(now),
                Work::Events(list) => list.iter_mut().for_each(|e| e.at = now),
                Work::Alone(never) => match *never {},
            }
        }
    }

    // Counting, in request order, on the tables as stored (the same pure diff as SQLite's).
    let mut tables = CountTables::from_snapshots(before.into_values());
    let diff = diff::count(batch.iter_mut().map(|j| &mut j.work), &mut tables, judge);
    let answers = diff.answers;

    // Round trip 2: every write, the batch's token, then COMMIT.
    let pool_rows: Vec<PoolRows> = diff.pools.iter().map(PoolRows::new).collect();
    let registry = RegistryRows::new(batch, served_by, false);
    let bench = RegistryRows::new(batch, served_by, true);
    let event_rows = EventRows::new(&diff.events, served_by);
    let refusal_rows = RefusalRows::new(&diff.refusals);
    let token = Uuid::new_v4();
    let at = now.millis();
    let mut writes: Vec<(&tokio_postgres::Statement, Vec<&(dyn ToSql + Sync)>)> = Vec::new();
    for d in &pool_rows {
        d.push_writes(&st, &mut writes);
    }
    if !registry.cmid.is_empty() {
        writes.push((&st.registry, registry.params()));
    }
    if !bench.cmid.is_empty() {
        writes.push((&st.bench_registry, bench.params()));
    }
    // After the registry rows (new machines' rows exist by then).
    let (seq_cmids, seq_numbers, seq_digests, clone_cmids) = installations::rows(&diff.notes);
    if !seq_cmids.is_empty() {
        writes.push((
            &st.note_sequences,
            installations::sequence_params(&seq_cmids, &seq_numbers, &seq_digests),
        ));
    }
    if !clone_cmids.is_empty() {
        writes.push((&st.note_clones, vec![&clone_cmids]));
    }
    if !event_rows.at.is_empty() {
        writes.push((&st.events, event_rows.params()));
    }
    if !refusal_rows.day.is_empty() {
        writes.push((&st.refusals, refusal_rows.params()));
    }
    writes.push((&st.token, vec![&token, &served_by, &at]));
    // Counting takes microseconds; much more means this process was frozen with the locks held
    // (SIGSTOP, a paused VM). By now the database may have ended the session and others have
    // counted on: this work is stale and is never committed.
    if claimed_at.elapsed() > CLAIM_TO_COMMIT {
        let _ = client.batch_execute("ROLLBACK").await;
        tracing::warn!(
            frozen_ms = claimed_at.elapsed().as_millis() as u64,
            "this host was frozen between counting and committing; the batch is rolled back"
        );
        return Err(StoreError::Timeout {
            seconds: claimed_at.elapsed().as_secs_f64(),
        });
    }
    let sent = tokio::time::timeout(
        COMMIT_REPLY_TIMEOUT,
        join(
            join_all(writes.iter().map(|(s, p)| client.query(*s, p))),
            client.batch_execute("COMMIT"),
        ),
    )
    .await;
    let batch_len = batch.len();
    let lost = |detail: String| async move {
        match outcome::resolve(pool, session, token).await {
            Resolved::Committed => {
                tracing::warn!(%detail, "a commit's reply was lost; the batch's token shows it committed");
                Ok(())
            }
            Resolved::NotCommitted => Err(StoreError::Backend {
                operation: "commit",
                source: Arc::new(std::io::Error::other(format!(
                    "{detail}; the batch's token shows it did not commit"
                ))),
            }),
            Resolved::Unknown(why) => {
                metrics::counter!("tally_store_outcome_unknown_total").increment(1);
                outcome::recheck_later(pool.clone(), session, token, batch_len);
                Err(StoreError::OutcomeUnknown {
                    detail: format!("{detail}; {why}"),
                })
            }
        }
    };
    let (written, committed) = match sent {
        Ok(r) => r,
        Err(_) => {
            lost(format!(
                "no reply to COMMIT within {COMMIT_REPLY_TIMEOUT:?}"
            ))
            .await?;
            return Ok(answers);
        }
    };
    // A write that failed with a server error aborted the transaction, so the COMMIT rolled it
    // back: definitely not committed. A connection lost on the way: the token decides.
    let mut registry_out: Vec<Row> = Vec::new();
    let mut dropped: Option<tokio_postgres::Error> = None;
    for (i, w) in written.into_iter().enumerate() {
        match w {
            Ok(rows) => {
                if std::ptr::eq(writes[i].0, &st.registry)
                    || std::ptr::eq(writes[i].0, &st.bench_registry)
                {
                    registry_out.extend(rows);
                }
            }
            Err(e) if e.code().is_some() => return Err(backend("write")(e)),
            Err(e) => dropped = Some(e),
        }
    }
    match (committed, dropped) {
        (Err(e), _) if e.code().is_some() => return Err(backend("commit")(e)),
        (Err(e), _) | (Ok(()), Some(e)) => {
            lost(format!("connection lost after COMMIT was sent ({e})")).await?;
            return Ok(answers);
        }
        (Ok(()), None) => {}
    }

    let inserted = registry_out.iter().filter(|r| r.get::<_, bool>(0)).count() as u64;
    // The cap bounds storage: the bench pool's machines count towards it too.
    size.estimate += inserted;
    let skipped = registry_out.len() < registry.cmid.len() + bench.cmid.len();
    if skipped && !size.full.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            cap = size.cap,
            "registry full: new machines are counted but not registered (event 1005)"
        );
        // Event 1005 in a transaction of its own: once, not per request.
        let at = registry
            .last_seen
            .iter()
            .chain(&bench.last_seen)
            .max()
            .copied()
            .unwrap_or(0);
        let event = crate::registry_full_event(Timestamp(at), size.cap);
        let rows = EventRows::new(std::slice::from_ref(&event), served_by);
        let _ = client.query(&st.events, &rows.params()).await;
    }
    Ok(answers)
}

fn first_trip_timeout() -> StoreError {
    StoreError::Timeout {
        seconds: FIRST_TRIP_TIMEOUT.as_secs_f64(),
    }
}

/// Rolls the open transaction back (best effort) and gives `e` back.
async fn rollback(client: &Object, e: StoreError) -> StoreError {
    let _ = client.batch_execute("ROLLBACK").await;
    e
}

/// The pools a batch counts in, in id order: the lock order, the same on every host.
fn counted_pools(batch: &[Job]) -> Vec<Uuid> {
    let mut pools: Vec<Uuid> = batch
        .iter()
        .filter_map(|j| match &j.work {
            Work::Changes(c) => c.counting.map(|r| r.pool),
            _ => None,
        })
        .collect();
    pools.sort_unstable();
    pools.dedup();
    pools
}

type Locked = (HashMap<Uuid, PoolSnapshot>, Timestamp);

/// Round trip 1: opens the transaction, locks every pool in id order, reads their tables and
/// the database's clock. `None`: a pool's row does not exist yet (the transaction is open;
/// the caller rolls it back).
async fn lock_and_read(
    client: &Object,
    st: &Statements,
    pools: &[Uuid],
) -> Result<Option<Locked>, StoreError> {
    let lock_params: Vec<[&(dyn ToSql + Sync); 1]> = pools.iter().map(|p| [p as _]).collect();
    let (((begun, locks), entries), now) = join(
        join(
            join(
                client.batch_execute(BEGIN),
                join_all(lock_params.iter().map(|p| client.query(&st.lock, p))),
            ),
            client.query(&st.entries, &[&pools]),
        ),
        client.query_one(&st.now, &[]),
    )
    .await;
    begun.map_err(backend("begin"))?;
    let mut out = HashMap::with_capacity(pools.len());
    for (pool, rows) in pools.iter().zip(locks) {
        let rows = rows.map_err(lock_error)?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let capacity = row.get::<_, i32>(0).max(0) as u32;
        out.insert(
            *pool,
            PoolSnapshot {
                pool: *pool,
                capacity,
                entries: Vec::new(),
            },
        );
    }
    for r in entries.map_err(backend("read pool"))? {
        if let Some(snap) = out.get_mut(&r.get::<_, Uuid>(0)) {
            snap.entries.push((r.get(1), Timestamp(r.get(2))));
        }
    }
    let now = now.map_err(backend("read the database clock"))?;
    Ok(Some((out, Timestamp(now.get(0)))))
}

/// A lock wait over `lock_timeout` is its own error: a host stalled or died holding the lock.
fn lock_error(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
        metrics::counter!("tally_store_lock_timeouts_total").increment(1);
        StoreError::LockWait {
            seconds: LOCK_TIMEOUT.as_secs_f64(),
            idle: crate::pg::IDLE_IN_TRANSACTION_TIMEOUT.as_secs_f64(),
        }
    } else {
        backend("lock pool")(e)
    }
}

/// X6: the registry rows of the installations the batch judges, read under the pool locks (no
/// round trip when the batch has no version-2 request).
async fn read_judge(client: &Object, batch: &[Job]) -> Result<Judge, StoreError> {
    let cmids = Judge::wanted(batch.iter().filter_map(|j| match &j.work {
        Work::Changes(c) => Some(&**c),
        _ => None,
    }));
    if cmids.is_empty() {
        return Ok(Judge::default());
    }
    Ok(Judge::new(installations::read(client, &cmids).await?))
}
