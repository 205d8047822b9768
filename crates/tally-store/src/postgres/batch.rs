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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::{Object, Pool};
use futures_util::future::{join, join_all};
use tally_core::clones::{ClonePolicy, Verdict};
use tally_core::counting::{CountTables, PoolSnapshot};
use tally_core::host::{Changes, Counted};
use tally_core::time::Timestamp;
use tally_proto::ResultCode;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::installations::{self, Judge};
use super::sql::{
    BENCH_REGISTRY_WRITES, CREATE_POOL, DATABASE_NOW, DELETE_ENTRIES, EventRows, INSERT_EVENTS,
    LOCK_POOL, PoolDiff, READ_ENTRIES, REGISTRY_WRITES, RefusalRows, RegistryRows, UPDATE_CAPACITY,
    UPSERT_ENTRIES, UPSERT_REFUSALS,
};
use super::{MAX_BATCH, backend, pool_error};
use crate::health::Health;
use crate::{Event, StoreError, TimeSource};

/// Attempts for a batch that hits a serialization failure or a deadlock before giving up.
const ATTEMPTS: usize = 5;

/// Below this estimate the registry is counted exactly.
const EXACT_BELOW: f32 = 100_000.0;

/// How often the registry's size estimate is refreshed.
const SIZE_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

pub(super) enum Work {
    Changes(Box<Changes>),
    Events(Vec<Event>),
}

pub(super) struct Job {
    pub(super) work: Work,
    pub(super) done: oneshot::Sender<Result<Counted, StoreError>>,
}

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
    async fn refresh(&mut self, client: &tokio_postgres::Client) -> Result<(), StoreError> {
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

/// Runs until every sender is gone.
pub(super) async fn batcher(
    pool: Pool,
    mut rx: mpsc::Receiver<Job>,
    served_by: Arc<str>,
    health: Arc<Health>,
    mut size: RegistrySize,
) {
    let mut conn: Option<Object> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut result = Err(StoreError::Closed);
        for attempt in 1..=ATTEMPTS {
            result = commit_batch(&pool, &mut conn, &mut batch, &served_by, &mut size).await;
            match &result {
                Err(StoreError::Backend { source, .. })
                    if attempt < ATTEMPTS && retryable(source) =>
                {
                    tracing::debug!(attempt, "batch hit a serialization failure; retrying");
                }
                Err(_) => {
                    // The connection may be what failed; the next batch takes a new one.
                    conn = None;
                    break;
                }
                Ok(_) => break,
            }
        }
        match result {
            Ok(answers) => {
                health.ok();
                for (job, answer) in batch.into_iter().zip(answers) {
                    let _ = job.done.send(Ok(answer));
                }
            }
            Err(error) => {
                health.failed(&error);
                for job in batch {
                    let _ = job.done.send(Err(error.clone()));
                }
            }
        }
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
    })
}

/// One transaction for the whole batch; returns each job's answer in order.
async fn commit_batch(
    pool: &Pool,
    conn: &mut Option<Object>,
    batch: &mut [Job],
    served_by: &str,
    size: &mut RegistrySize,
) -> Result<Vec<Counted>, StoreError> {
    let client = match conn {
        Some(c) if !c.is_closed() => c,
        _ => conn.insert(pool.get().await.map_err(pool_error("connect"))?),
    };
    if size.checked.is_none_or(|t| t.elapsed() >= SIZE_REFRESH)
        || size.stale.swap(false, Ordering::Relaxed)
    {
        size.refresh(client).await?;
    }
    let may_insert = size.estimate < size.cap;
    let st = prepare(client, may_insert).await?;
    let pools = counted_pools(batch);

    // Round trip 1: BEGIN, every pool's lock, their tables, then the database's clock (in this
    // order on the wire: the clock is read once the locks are held, so batches of one pool are
    // stamped in commit order).
    let lock_params: Vec<[&(dyn ToSql + Sync); 1]> = pools.iter().map(|p| [p as _]).collect();
    let (((begun, locks), entries), now) = join(
        join(
            join(
                client.batch_execute("BEGIN"),
                join_all(lock_params.iter().map(|p| client.query(&st.lock, p))),
            ),
            client.query(&st.entries, &[&pools]),
        ),
        client.query_one(&st.now, &[]),
    )
    .await;
    let locked = match begun.map_err(backend("begin")) {
        Ok(()) => read_tables(client, &st, &pools, locks, entries).await,
        Err(e) => Err(e),
    };
    let locked = match (locked, now.map_err(backend("read the database clock"))) {
        (Ok(tables), Ok(now)) => Ok((tables, Timestamp(now.get(0)))),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let (before, now) = match locked {
        Ok(b) => b,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    };
    // X5: the fleet counts, expires and stamps on one clock, the database's; no host's clock
    // can expire or immortalise another's entries.
    if size.time == TimeSource::Database {
        for job in batch.iter_mut() {
            match &mut job.work {
                Work::Changes(changes) => changes.restamp(now),
                Work::Events(list) => list.iter_mut().for_each(|e| e.at = now),
            }
        }
    }

    // X6: the installations' registry rows, read under the pool locks (no round trip when the
    // batch has no version-2 request).
    let changes = batch.iter().filter_map(|j| match &j.work {
        Work::Changes(c) => Some(&**c),
        Work::Events(_) => None,
    });
    let mut judge = match Judge::read(client, changes).await {
        Ok(j) => j,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    };

    // Counting, in request order, on the tables as stored.
    let mut tables = CountTables::from_snapshots(before.values().cloned());
    let mut answers = Vec::with_capacity(batch.len());
    let mut events: Vec<Event> = Vec::new();
    let mut refusals: BTreeMap<(i64, Uuid, u32), (i64, i64)> = BTreeMap::new();
    for job in batch.iter_mut() {
        match &mut job.work {
            Work::Changes(changes) => {
                let judged = judge.judge(changes);
                let clone = judged.is_some_and(|(v, _)| v.is_clone());
                if let Some((Verdict::Clone { stored }, before)) = judged {
                    events.push(crate::clone_event(
                        changes,
                        stored,
                        before.and_then(|b| b.hardware_digest),
                    ));
                }
                if clone && changes.clone_policy == ClonePolicy::Apart {
                    // Counted apart: this copy counts nothing under this CMID; it takes a new
                    // one and asks again. Event 12290 says so; the registry row counts it.
                    changes.counting = None;
                    changes.registry.result = ResultCode::CLONE_DETECTED;
                    let mut counted = changes.settle(0);
                    counted.clone = true;
                    answers.push(counted);
                    events.push(crate::activation_event(changes));
                    continue;
                }
                let Some(req) = changes.counting else {
                    // A refusal adds to its day's aggregate: bounded storage whatever is sent.
                    let at = changes.registry.seen_at.millis();
                    let e = refusals
                        .entry(crate::refusal_key(changes))
                        .or_insert((0, at));
                    e.0 += 1;
                    e.1 = e.1.max(at);
                    answers.push(changes.settle(0));
                    continue;
                };
                let count = tables.apply(&req).0;
                let mut counted = changes.settle(count);
                counted.clone = clone;
                answers.push(counted);
                events.push(crate::activation_event(changes));
            }
            Work::Events(list) => {
                events.extend(list.iter().cloned());
                answers.push(Counted::default());
            }
        }
    }

    // Round trip 2: every write, then COMMIT.
    let diffs: Vec<PoolDiff> = pools
        .iter()
        .filter_map(|p| Some(PoolDiff::new(before.get(p)?, tables.pool(*p)?)))
        .collect();
    let registry = RegistryRows::new(batch, served_by, false);
    let bench = RegistryRows::new(batch, served_by, true);
    let event_rows = EventRows::new(&events, served_by);
    let refusal_rows = RefusalRows::new(&refusals);
    let mut writes: Vec<(&tokio_postgres::Statement, Vec<&(dyn ToSql + Sync)>)> = Vec::new();
    for d in &diffs {
        d.push_writes(&st, &mut writes);
    }
    if !registry.cmid.is_empty() {
        writes.push((&st.registry, registry.params()));
    }
    if !bench.cmid.is_empty() {
        writes.push((&st.bench_registry, bench.params()));
    }
    // After the registry rows (new machines' rows exist by then).
    let (seq_cmids, seq_numbers, seq_digests, clone_cmids) = judge.rows();
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
    let (written, committed) = join(
        join_all(writes.iter().map(|(s, p)| client.query(*s, p))),
        client.batch_execute("COMMIT"),
    )
    .await;
    // Any failed write aborted the transaction, so the COMMIT rolled it back.
    // The registry statements' rows: one per machine written, `true` if it was new.
    let mut registry_out: Vec<Row> = Vec::new();
    for (i, w) in written.into_iter().enumerate() {
        let rows = w.map_err(backend("write"))?;
        if std::ptr::eq(writes[i].0, &st.registry) || std::ptr::eq(writes[i].0, &st.bench_registry)
        {
            registry_out.extend(rows);
        }
    }
    committed.map_err(backend("commit"))?;

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

/// The pools a batch counts in, in id order: the lock order, the same on every host.
fn counted_pools(batch: &[Job]) -> Vec<Uuid> {
    let mut pools: Vec<Uuid> = batch
        .iter()
        .filter_map(|j| match &j.work {
            Work::Changes(c) => c.counting.map(|r| r.pool),
            Work::Events(_) => None,
        })
        .collect();
    pools.sort_unstable();
    pools.dedup();
    pools
}

/// Turns the locked rows and the entries into snapshots. A pool seen for the first time gets its
/// row created and locked first; its table is then empty (no host could have written entries
/// for a pool without its row).
async fn read_tables(
    client: &Object,
    st: &Statements,
    pools: &[Uuid],
    locks: Vec<Result<Vec<Row>, tokio_postgres::Error>>,
    entries: Result<Vec<Row>, tokio_postgres::Error>,
) -> Result<HashMap<Uuid, PoolSnapshot>, StoreError> {
    let mut out = HashMap::with_capacity(pools.len());
    let mut created = false;
    for (pool, rows) in pools.iter().zip(locks) {
        let mut rows = rows.map_err(backend("lock pool"))?;
        if rows.is_empty() {
            client
                .execute(&st.create_pool, &[pool])
                .await
                .map_err(backend("create pool"))?;
            rows = client
                .query(&st.lock, &[pool])
                .await
                .map_err(backend("lock pool"))?;
            created = true;
        }
        let capacity = rows.first().map_or(0, |r| r.get::<_, i32>(0)).max(0) as u32;
        out.insert(
            *pool,
            PoolSnapshot {
                pool: *pool,
                capacity,
                entries: Vec::new(),
            },
        );
    }
    // After a pool row was created (and waited for), read the tables again under the locks.
    let entries = if created {
        client.query(&st.entries, &[&pools]).await
    } else {
        entries
    };
    for r in entries.map_err(backend("read pool"))? {
        if let Some(snap) = out.get_mut(&r.get::<_, Uuid>(0)) {
            snap.entries.push((r.get(1), Timestamp(r.get(2))));
        }
    }
    Ok(out)
}
