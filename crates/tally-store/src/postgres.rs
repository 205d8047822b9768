//! The PostgreSQL backend: fleet mode (X1).
//!
//! Every host of a fleet opens a [`PgStore`] on one database. Each host keeps group commit: one
//! batcher task takes every request already queued (up to [`MAX_BATCH`]) and commits them in one
//! transaction. Inside it, for each pool the batch touches (in pool order, so two hosts never
//! wait on each other in a cycle), the batcher takes the pool's row `FOR UPDATE`, reads the
//! pool's table (at most twice the highest threshold: a few dozen rows), counts the batch's
//! requests on it with the same sans-I/O rules as every backend
//! ([`tally_core::counting::CountTables::apply`]), and writes back only what changed. The row
//! lock is held until commit, so the pool's requests are counted one transaction at a time across
//! the fleet, in commit order: exactly what one host would have counted (linearizable), never
//! more. Nothing is acknowledged before the commit returns.
//!
//! A lost database (X3): the pool's connect and wait timeouts bound every commit, the host
//! answers `storage_failure`, logs the outage once (and its end once), and the next batch after
//! the database is back (or a promoted standby is found through a multi-host URL) succeeds
//! without a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool};
use tally_core::counting::{CountTables, PoolSnapshot};
use tally_core::host::{Changes, Counted};
use tally_core::time::Timestamp;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::health::Health;
use crate::{
    Event, EventQuery, PoolCount, RefusalCount, RegistryEntry, RegistryPage, RegistrySort, Store,
    StoreError, StoreOptions,
};

/// Most requests committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// The host schema's migrations, in order.
pub const MIGRATIONS: &[&str] = &[include_str!("../migrations/postgres/0001_init.sql")];

/// The advisory lock key that serialises the host schema's migrations across processes.
pub const MIGRATION_LOCK: i64 = 0x7461_6c6c_7901; // "tally" + 1

/// Attempts for a batch that hits a serialization failure or a deadlock before giving up.
const ATTEMPTS: usize = 5;

enum Work {
    Changes(Box<Changes>),
    Events(Vec<Event>),
}

struct Job {
    work: Work,
    done: oneshot::Sender<Result<Counted, StoreError>>,
}

/// A host's store on a fleet's PostgreSQL database. Cloning shares the batcher and the pool.
///
/// A store opened with [`PgStore::open_read_only`] has no batcher: every write returns
/// [`StoreError::ReadOnly`] and the schema is only checked, never migrated.
#[derive(Clone)]
pub struct PgStore {
    jobs: Option<mpsc::Sender<Job>>,
    pool: Pool,
    served_by: Arc<str>,
    health: Arc<Health>,
    full: Arc<AtomicBool>,
    stale: Arc<AtomicBool>,
}

/// The batcher's view of the registry's size. On PostgreSQL the cap is checked against the
/// planner's row estimate (`pg_class.reltuples`), refreshed every [`SIZE_REFRESH`]: approximate
/// by design, so that no fleet-wide counter row serialises every host's commits.
struct RegistrySize {
    cap: u64,
    estimate: u64,
    checked: Option<std::time::Instant>,
    full: Arc<AtomicBool>,
    /// Set by retention: the estimate is stale, refresh before the next batch.
    stale: Arc<AtomicBool>,
}

impl RegistrySize {
    /// The planner's estimate once the table is large (cheap at any size), an exact count while
    /// it is small or has never been analysed (`reltuples` is -1 then).
    async fn refresh(&mut self, client: &tokio_postgres::Client) -> Result<(), StoreError> {
        let estimate: f32 = client
            .query_one(
                "SELECT reltuples FROM pg_class WHERE oid = 'registry'::regclass",
                &[],
            )
            .await
            .map_err(backend("estimate registry"))?
            .get(0);
        self.estimate = if estimate < EXACT_BELOW {
            let n: i64 = client
                .query_one("SELECT count(*) FROM registry", &[])
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

/// Below this estimate the registry is counted exactly.
const EXACT_BELOW: f32 = 100_000.0;

/// How often the registry's size estimate is refreshed.
const SIZE_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("served_by", &self.served_by)
            .finish_non_exhaustive()
    }
}

fn backend(operation: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Backend {
        operation,
        source: Arc::new(e),
    }
}

fn pool_error(operation: &'static str) -> impl FnOnce(deadpool_postgres::PoolError) -> StoreError {
    move |e| StoreError::Backend {
        operation,
        source: Arc::new(e),
    }
}

impl PgStore {
    /// Opens the fleet's store on `pool`, migrating the schema first (under an advisory lock, so
    /// hosts starting at once do not race). `served_by` names this host in the registry and the
    /// event log.
    pub async fn open(pool: Pool, served_by: &str) -> Result<Self, StoreError> {
        Self::open_with(pool, served_by, StoreOptions::default()).await
    }

    /// As [`PgStore::open`], with limits.
    pub async fn open_with(
        pool: Pool,
        served_by: &str,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        {
            let mut client = pool.get().await.map_err(pool_error("connect"))?;
            crate::migrate::postgres(&mut client, MIGRATIONS, MIGRATION_LOCK).await?;
        }
        let (jobs, rx) = mpsc::channel(4 * MAX_BATCH);
        let health = Arc::new(Health::default());
        let full: Arc<AtomicBool> = Arc::default();
        let served_by: Arc<str> = Arc::from(served_by);
        let stale: Arc<AtomicBool> = Arc::default();
        let size = RegistrySize {
            cap: options.registry_cap,
            estimate: 0,
            checked: None,
            full: Arc::clone(&full),
            stale: Arc::clone(&stale),
        };
        tokio::spawn(batcher(
            pool.clone(),
            rx,
            Arc::clone(&served_by),
            Arc::clone(&health),
            size,
        ));
        Ok(Self {
            jobs: Some(jobs),
            pool,
            served_by,
            health,
            full,
            stale,
        })
    }

    /// Opens the fleet's database for reading only (status, clients, events, report while the
    /// hosts run): no batcher, no migration. Fails with [`StoreError::Missing`] when no host
    /// has created the schema yet, and with [`StoreError::TooNew`] / [`StoreError::NeedsUpgrade`]
    /// when the schema is not this build's.
    pub async fn open_read_only(pool: Pool, what: &str) -> Result<Self, StoreError> {
        let client = pool.get().await.map_err(pool_error("connect"))?;
        let exists: bool = client
            .query_one("SELECT to_regclass('tally_schema') IS NOT NULL", &[])
            .await
            .map_err(backend("read schema version"))?
            .get(0);
        let version: Option<i64> = if exists {
            client
                .query_opt(
                    "SELECT version FROM tally_schema WHERE lock_key = $1",
                    &[&MIGRATION_LOCK],
                )
                .await
                .map_err(backend("read schema version"))?
                .map(|r| r.get(0))
        } else {
            None
        };
        let supported = MIGRATIONS.len() as i64;
        match version {
            None => {
                return Err(StoreError::Missing {
                    path: what.to_owned(),
                });
            }
            Some(v) if v > supported => {
                return Err(StoreError::TooNew {
                    found: v,
                    supported,
                });
            }
            Some(v) if v < supported => {
                return Err(StoreError::NeedsUpgrade {
                    path: what.to_owned(),
                    found: v,
                    supported,
                });
            }
            Some(_) => {}
        }
        drop(client);
        Ok(Self {
            jobs: None,
            pool,
            served_by: Arc::from(what),
            health: Arc::default(),
            full: Arc::default(),
            stale: Arc::default(),
        })
    }

    /// The name this host writes into the registry and the events.
    pub fn served_by(&self) -> &str {
        &self.served_by
    }

    async fn submit(&self, work: Work) -> Result<Counted, StoreError> {
        let jobs = self.jobs.as_ref().ok_or_else(|| StoreError::ReadOnly {
            path: self.served_by.to_string(),
        })?;
        let (done, wait) = oneshot::channel();
        jobs.send(Job { work, done })
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    fn writable(&self) -> Result<(), StoreError> {
        match self.jobs {
            Some(_) => Ok(()),
            None => Err(StoreError::ReadOnly {
                path: self.served_by.to_string(),
            }),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error("connect"))
    }
}

async fn batcher(
    pool: Pool,
    mut rx: mpsc::Receiver<Job>,
    served_by: Arc<str>,
    health: Arc<Health>,
    mut size: RegistrySize,
) {
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
            result = commit_batch(&pool, &mut batch, &served_by, &mut size).await;
            match &result {
                Err(StoreError::Backend { source, .. })
                    if attempt < ATTEMPTS && retryable(source) =>
                {
                    tracing::debug!(attempt, "batch hit a serialization failure; retrying");
                }
                _ => break,
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

/// One transaction for the whole batch; returns each job's answer in order.
async fn commit_batch(
    pool: &Pool,
    batch: &mut [Job],
    served_by: &str,
    size: &mut RegistrySize,
) -> Result<Vec<Counted>, StoreError> {
    let mut client = pool.get().await.map_err(pool_error("connect"))?;
    if size.checked.is_none_or(|t| t.elapsed() >= SIZE_REFRESH)
        || size.stale.swap(false, Ordering::Relaxed)
    {
        size.refresh(&client).await?;
    }
    let may_insert = size.estimate < size.cap;
    let tx = client.transaction().await.map_err(backend("begin"))?;
    // The pools this batch counts in, in order: lock order is the same on every host.
    let pools: Vec<(Uuid, u16)> = {
        let mut m: BTreeMap<Uuid, u16> = BTreeMap::new();
        for job in batch.iter() {
            if let Work::Changes(c) = &job.work
                && let Some(req) = &c.counting
            {
                let t = m.entry(req.pool).or_default();
                *t = (*t).max(req.threshold);
            }
        }
        m.into_iter().collect()
    };
    let mut before: HashMap<Uuid, PoolSnapshot> = HashMap::new();
    for (pool, _) in &pools {
        before.insert(*pool, lock_pool(&tx, *pool).await?);
    }
    let mut tables = CountTables::from_snapshots(before.values().cloned());
    let mut answers = Vec::with_capacity(batch.len());
    let mut registry: Vec<&Changes> = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let mut refusals: BTreeMap<(i64, Uuid, u32), (i64, i64)> = BTreeMap::new();
    for job in batch.iter_mut() {
        match &mut job.work {
            Work::Changes(changes) => {
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
                answers.push(changes.settle(count));
                events.push(crate::activation_event(changes));
            }
            Work::Events(list) => {
                events.extend(list.iter().cloned());
                answers.push(Counted::default());
            }
        }
    }
    for job in batch.iter() {
        if let Work::Changes(c) = &job.work
            && c.counting.is_some()
        {
            registry.push(c);
        }
    }
    for (pool, _) in &pools {
        if let (Some(old), Some(new)) = (before.get(pool), tables.pool(*pool)) {
            write_pool_diff(&tx, old, new).await?;
        }
    }
    let written = write_registry(&tx, &registry, served_by, may_insert).await?;
    let newly_full = written.skipped && !size.full.load(Ordering::Relaxed);
    if newly_full {
        let at = registry.iter().map(|c| c.registry.seen_at).max();
        events.push(crate::registry_full_event(
            at.unwrap_or(Timestamp(0)),
            size.cap,
        ));
    }
    write_events(&tx, &events, served_by).await?;
    write_refusals(&tx, &refusals).await?;
    tx.commit().await.map_err(backend("commit"))?;
    size.estimate += written.inserted;
    if newly_full {
        size.full.store(true, Ordering::Relaxed);
        tracing::warn!(
            cap = size.cap,
            "registry full: new machines are counted but not registered (event 1005)"
        );
    }
    Ok(answers)
}

/// Takes the pool's row lock (creating the row if this is the pool's first request) and reads
/// its table.
async fn lock_pool(
    tx: &deadpool_postgres::Transaction<'_>,
    pool: Uuid,
) -> Result<PoolSnapshot, StoreError> {
    let insert = tx
        .prepare_cached("INSERT INTO pools (pool, capacity) VALUES ($1, 0) ON CONFLICT DO NOTHING")
        .await
        .map_err(backend("prepare"))?;
    tx.execute(&insert, &[&pool])
        .await
        .map_err(backend("create pool"))?;
    let lock = tx
        .prepare_cached("SELECT capacity FROM pools WHERE pool = $1 FOR UPDATE")
        .await
        .map_err(backend("prepare"))?;
    let capacity: i32 = tx
        .query_one(&lock, &[&pool])
        .await
        .map_err(backend("lock pool"))?
        .get(0);
    let entries = tx
        .prepare_cached("SELECT cmid, last_seen FROM pool_entries WHERE pool = $1")
        .await
        .map_err(backend("prepare"))?;
    let rows = tx
        .query(&entries, &[&pool])
        .await
        .map_err(backend("read pool"))?;
    Ok(PoolSnapshot {
        pool,
        capacity: capacity.max(0) as u32,
        entries: rows
            .iter()
            .map(|r| (r.get::<_, Uuid>(0), Timestamp(r.get::<_, i64>(1))))
            .collect(),
    })
}

/// Writes what the batch changed in one pool's table: capacity, new or refreshed entries, and
/// entries that lapsed or gave way.
async fn write_pool_diff(
    tx: &deadpool_postgres::Transaction<'_>,
    old: &PoolSnapshot,
    new: &tally_core::counting::PoolTable,
) -> Result<(), StoreError> {
    let pool = old.pool;
    if new.capacity() != old.capacity {
        let capacity = i32::try_from(new.capacity()).unwrap_or(i32::MAX);
        tx.execute(
            "UPDATE pools SET capacity = GREATEST(capacity, $2) WHERE pool = $1",
            &[&pool, &capacity],
        )
        .await
        .map_err(backend("write capacity"))?;
    }
    let old_entries: HashMap<Uuid, Timestamp> = old.entries.iter().copied().collect();
    let (mut cmids, mut seen) = (Vec::new(), Vec::new());
    let mut kept: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
    for (cmid, at) in new.entries() {
        kept.insert(cmid);
        if old_entries.get(&cmid) != Some(&at) {
            cmids.push(cmid);
            seen.push(at.millis());
        }
    }
    let removed: Vec<Uuid> = old_entries
        .keys()
        .filter(|c| !kept.contains(c))
        .copied()
        .collect();
    if !removed.is_empty() {
        tx.execute(
            "DELETE FROM pool_entries WHERE pool = $1 AND cmid = ANY($2)",
            &[&pool, &removed],
        )
        .await
        .map_err(backend("write pool"))?;
    }
    if !cmids.is_empty() {
        tx.execute(
            "INSERT INTO pool_entries (pool, cmid, last_seen)
             SELECT $1, c, s FROM unnest($2::uuid[], $3::int8[]) AS t (c, s)
             ON CONFLICT (pool, cmid) DO UPDATE SET last_seen = EXCLUDED.last_seen",
            &[&pool, &cmids, &seen],
        )
        .await
        .map_err(backend("write pool"))?;
    }
    Ok(())
}

/// Registry rows in request order. A client that asked twice in one batch is written twice, in
/// order, so its row ends as its latest request left it.
/// Registry rows in request order; says how many were new and whether one was left out
/// because the registry is at its cap.
async fn write_registry(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[&Changes],
    served_by: &str,
    may_insert: bool,
) -> Result<RegistryWritten, StoreError> {
    if rows.is_empty() {
        return Ok(RegistryWritten::default());
    }
    let stmt = tx
        .prepare_cached(if may_insert {
            UPSERT_REGISTRY
        } else {
            UPDATE_REGISTRY
        })
        .await
        .map_err(backend("prepare"))?;
    // Sent as one pipeline: tokio-postgres queues every statement before awaiting any answer.
    let writes = rows.iter().map(|c| {
        let r = &c.registry;
        let state = r.license_state as i16;
        let result = i64::from(r.result.0);
        let count = i32::try_from(r.count).unwrap_or(i32::MAX);
        let stmt = &stmt;
        async move {
            tx.query_opt(
                stmt,
                &[
                    &r.cmid,
                    &r.machine_name,
                    &r.sku,
                    &r.pool,
                    &state,
                    &r.seen_at.millis(),
                    &result,
                    &count,
                    &r.activated,
                    &served_by,
                ],
            )
            .await
        }
    });
    let mut written = RegistryWritten::default();
    for w in futures_util::future::join_all(writes).await {
        match w.map_err(backend("write registry"))? {
            Some(row) if row.get::<_, bool>(0) => written.inserted += 1,
            Some(_) => {}
            None => written.skipped = true,
        }
    }
    Ok(written)
}

/// What [`write_registry`] did.
#[derive(Debug, Default)]
struct RegistryWritten {
    /// New machines added.
    inserted: u64,
    /// Whether a new machine was left out (at the cap).
    skipped: bool,
}

const UPSERT_REGISTRY: &str =
    "INSERT INTO registry (cmid, machine_name, sku, pool, license_state, first_seen,
                       last_seen, last_result, last_count, activated, requests, served_by)
     VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, 1, $10)
     ON CONFLICT (cmid) DO UPDATE SET
         machine_name = EXCLUDED.machine_name, sku = EXCLUDED.sku, pool = EXCLUDED.pool,
         license_state = EXCLUDED.license_state,
         last_seen = GREATEST(registry.last_seen, EXCLUDED.last_seen),
         last_result = EXCLUDED.last_result, last_count = EXCLUDED.last_count,
         activated = EXCLUDED.activated, requests = registry.requests + 1,
         served_by = EXCLUDED.served_by
     RETURNING (xmax = 0)";

/// At the cap: machines already registered are updated, new ones are not added.
const UPDATE_REGISTRY: &str =
    "UPDATE registry SET machine_name = $2, sku = $3, pool = $4, license_state = $5,
         last_seen = GREATEST(last_seen, $6), last_result = $7, last_count = $8,
         activated = $9, requests = requests + 1, served_by = $10
     WHERE cmid = $1
     RETURNING false";

async fn write_refusals(
    tx: &deadpool_postgres::Transaction<'_>,
    refusals: &BTreeMap<(i64, Uuid, u32), (i64, i64)>,
) -> Result<(), StoreError> {
    if refusals.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO refusals (day, sku, result, requests, last_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (day, sku, result) DO UPDATE SET
                 requests = refusals.requests + EXCLUDED.requests,
                 last_at = GREATEST(refusals.last_at, EXCLUDED.last_at)",
        )
        .await
        .map_err(backend("prepare"))?;
    for ((day, sku, result), (n, last)) in refusals {
        let day = i32::try_from(*day).unwrap_or(i32::MAX);
        let result = i64::from(*result);
        tx.execute(&stmt, &[&day, sku, &result, n, last])
            .await
            .map_err(backend("write refusals"))?;
    }
    Ok(())
}

async fn write_events(
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[Event],
    host: &str,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let at: Vec<i64> = events.iter().map(|e| e.at.millis()).collect();
    let id: Vec<i32> = events
        .iter()
        .map(|e| i32::try_from(e.event_id).unwrap_or(i32::MAX))
        .collect();
    let level: Vec<&str> = events.iter().map(|e| e.level.as_str()).collect();
    let message: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    let data: Vec<String> = events.iter().map(|e| e.data.to_string()).collect();
    tx.execute(
        "INSERT INTO events (at, event_id, level, message, data, host)
         SELECT a, i, l, m, d::jsonb, $6
         FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[], $5::text[]) AS t (a, i, l, m, d)",
        &[&at, &id, &level, &message, &data, &host],
    )
    .await
    .map_err(backend("write events"))?;
    Ok(())
}

const REGISTRY_COLUMNS: &str = "cmid, machine_name, sku, pool, first_seen, last_seen, last_result, last_count, activated, requests, served_by";

fn registry_row(r: &tokio_postgres::Row) -> RegistryEntry {
    RegistryEntry {
        cmid: r.get(0),
        machine_name: r.get(1),
        sku: r.get(2),
        pool: r.get(3),
        first_seen: Timestamp(r.get(4)),
        last_seen: Timestamp(r.get(5)),
        last_result: u32::try_from(r.get::<_, i64>(6)).unwrap_or(0),
        last_count: u32::try_from(r.get::<_, i32>(7)).unwrap_or(0),
        activated: r.get(8),
        requests: u64::try_from(r.get::<_, i64>(9)).unwrap_or(0),
        served_by: r.get(10),
    }
}

fn search_pattern(search: Option<String>) -> Option<String> {
    search.map(|s| s.to_lowercase())
}

#[async_trait]
impl Store for PgStore {
    async fn load_tables(&self) -> Result<Vec<PoolSnapshot>, StoreError> {
        let client = self.client().await?;
        let pools = client
            .query("SELECT pool, capacity FROM pools ORDER BY pool", &[])
            .await
            .map_err(backend("load tables"))?;
        let entries = client
            .query("SELECT pool, cmid, last_seen FROM pool_entries", &[])
            .await
            .map_err(backend("load tables"))?;
        let mut by_pool: BTreeMap<Uuid, PoolSnapshot> = pools
            .iter()
            .map(|r| {
                let pool: Uuid = r.get(0);
                let capacity: i32 = r.get(1);
                (
                    pool,
                    PoolSnapshot {
                        pool,
                        capacity: capacity.max(0) as u32,
                        entries: Vec::new(),
                    },
                )
            })
            .collect();
        for r in &entries {
            if let Some(s) = by_pool.get_mut(&r.get::<_, Uuid>(0)) {
                s.entries.push((r.get(1), Timestamp(r.get(2))));
            }
        }
        Ok(by_pool.into_values().collect())
    }

    async fn pool_counts(&self, now: Timestamp) -> Result<Vec<PoolCount>, StoreError> {
        let cutoff = now
            .millis()
            .saturating_sub(tally_core::counting::ENTRY_LIFETIME_MS);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT p.pool, p.capacity, count(e.cmid)
                 FROM pools p LEFT JOIN pool_entries e ON e.pool = p.pool AND e.last_seen > $1
                 GROUP BY p.pool, p.capacity ORDER BY p.pool",
                &[&cutoff],
            )
            .await
            .map_err(backend("read pools"))?;
        Ok(rows
            .iter()
            .map(|r| PoolCount {
                pool: r.get(0),
                capacity: r.get::<_, i32>(1).max(0) as u32,
                count: u32::try_from(r.get::<_, i64>(2)).unwrap_or(u32::MAX),
            })
            .collect())
    }

    async fn commit(&self, changes: Changes) -> Result<Counted, StoreError> {
        self.submit(Work::Changes(Box::new(changes))).await
    }

    async fn registry(&self, page: RegistryPage) -> Result<Vec<RegistryEntry>, StoreError> {
        let order = match page.sort {
            RegistrySort::LastSeen => "last_seen DESC, cmid",
            RegistrySort::Machine => "lower(machine_name), cmid",
            RegistrySort::FirstSeen => "first_seen, cmid",
        };
        // The order comes from a closed enum, never from the request text.
        let sql = format!(
            "SELECT {REGISTRY_COLUMNS} FROM registry
             WHERE ($3::text IS NULL OR strpos(lower(machine_name), $3) > 0)
             ORDER BY {order} LIMIT $1 OFFSET $2"
        );
        let limit = i64::from(page.limit);
        let offset = i64::try_from(page.offset).unwrap_or(i64::MAX);
        let search = search_pattern(page.search);
        let params: [&(dyn ToSql + Sync); 3] = [&limit, &offset, &search];
        let rows = self
            .client()
            .await?
            .query(sql.as_str(), &params)
            .await
            .map_err(backend("read registry"))?;
        Ok(rows.iter().map(registry_row).collect())
    }

    async fn registry_entry(&self, cmid: Uuid) -> Result<Option<RegistryEntry>, StoreError> {
        let sql = format!("SELECT {REGISTRY_COLUMNS} FROM registry WHERE cmid = $1");
        let row = self
            .client()
            .await?
            .query_opt(sql.as_str(), &[&cmid])
            .await
            .map_err(backend("read registry"))?;
        Ok(row.as_ref().map(registry_row))
    }

    async fn registry_len(&self) -> Result<u64, StoreError> {
        self.registry_count(None).await
    }

    async fn registry_count(&self, search: Option<String>) -> Result<u64, StoreError> {
        let search = search_pattern(search);
        let n: i64 = self
            .client()
            .await?
            .query_one(
                "SELECT count(*) FROM registry
                 WHERE ($1::text IS NULL OR strpos(lower(machine_name), $1) > 0)",
                &[&search],
            )
            .await
            .map_err(backend("count registry"))?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn record_events(&self, events: Vec<Event>) -> Result<(), StoreError> {
        self.submit(Work::Events(events)).await.map(|_| ())
    }

    async fn events(&self, query: EventQuery) -> Result<Vec<Event>, StoreError> {
        let since = query.since.map_or(i64::MIN, Timestamp::millis);
        let id = query.event_id.map(|i| i32::try_from(i).unwrap_or(i32::MAX));
        let limit = i64::from(query.limit.max(1));
        let rows = self
            .client()
            .await?
            .query(
                "SELECT at, event_id, level, message, data::text, host FROM events
                 WHERE at >= $1 AND ($2::int4 IS NULL OR event_id = $2)
                 ORDER BY at DESC, id DESC LIMIT $3",
                &[&since, &id, &limit],
            )
            .await
            .map_err(backend("read events"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let mut data: serde_json::Value =
                    serde_json::from_str(r.get::<_, &str>(4)).unwrap_or(serde_json::Value::Null);
                if let Some(obj) = data.as_object_mut() {
                    obj.entry("host")
                        .or_insert_with(|| serde_json::Value::from(r.get::<_, String>(5)));
                }
                Event {
                    at: Timestamp(r.get(0)),
                    event_id: u32::try_from(r.get::<_, i32>(1)).unwrap_or(0),
                    level: r.get(2),
                    message: r.get(3),
                    data,
                }
            })
            .collect())
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.writable()?;
        // Any host may prune: deleting old rows commutes with every other host's writes.
        self.client()
            .await?
            .execute("DELETE FROM events WHERE at < $1", &[&before.millis()])
            .await
            .map_err(backend("prune events"))
    }

    fn storage_error(&self) -> Option<String> {
        self.health.error()
    }

    fn registry_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    async fn prune_registry(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.writable()?;
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM registry WHERE last_seen < $1",
                &[&before.millis()],
            )
            .await
            .map_err(backend("prune registry"))?;
        self.full.store(false, Ordering::Relaxed);
        // The next batch counts again.
        self.stale.store(true, Ordering::Relaxed);
        Ok(n)
    }

    async fn refusals(&self, since: Timestamp) -> Result<Vec<RefusalCount>, StoreError> {
        let day =
            i32::try_from(since.millis().div_euclid(tally_core::time::DAY_MS)).unwrap_or(i32::MIN);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT day, sku, result, requests, last_at FROM refusals WHERE day >= $1
                 ORDER BY day DESC, requests DESC",
                &[&day],
            )
            .await
            .map_err(backend("read refusals"))?;
        Ok(rows
            .iter()
            .map(|r| RefusalCount {
                day: i64::from(r.get::<_, i32>(0)),
                sku: r.get(1),
                result: u32::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                requests: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
                last_at: Timestamp(r.get(4)),
            })
            .collect())
    }
}
