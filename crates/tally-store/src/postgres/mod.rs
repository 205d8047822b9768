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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool};
use tally_core::counting::PoolSnapshot;
use tally_core::host::{Changes, Counted};
use tally_core::time::Timestamp;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::health::Health;
use crate::{
    CensusCutoffs, CensusRow, ClockEvidence, Event, EventQuery, PoolCount, RefusalCount,
    RegistryEntry, RegistryPage, RegistrySort, Store, StoreError, StoreOptions, TimeSource,
};

pub use crate::group_commit::MAX_BATCH;

/// The host schema's migrations, in order.
pub const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_registry_scale.sql"),
    include_str!("../../migrations/postgres/0003_clock.sql"),
    include_str!("../../migrations/postgres/0004_installations.sql"),
    include_str!("../../migrations/postgres/0005_batch_tokens.sql"),
];

/// The advisory lock key that serialises the host schema's migrations across processes.
pub const MIGRATION_LOCK: i64 = 0x7461_6c6c_7901; // "tally" + 1

mod batch;
mod clock;
mod event_cap;
mod installations;
mod outcome;
mod replication;
mod sql;

use batch::{Batcher, RegistrySize, Work};

use crate::group_commit::Queue;

/// A host's store on a fleet's PostgreSQL database. Cloning shares the batcher and the pool.
///
/// A store opened with [`PgStore::open_read_only`] has no batcher: every write returns
/// [`StoreError::ReadOnly`] and the schema is only checked, never migrated.
#[derive(Clone)]
pub struct PgStore {
    jobs: Option<Queue<std::convert::Infallible>>,
    pool: Pool,
    served_by: Arc<str>,
    health: Arc<Health>,
    full: Arc<AtomicBool>,
    stale: Arc<AtomicBool>,
    time: TimeSource,
    replication: replication::Shared,
    /// The event cap and what this host did for it (issue 21).
    event_cap: (u64, Arc<crate::event_cap::Shared>),
}

pub use replication::check as check_replication;

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

/// The servers in a fleet store's connection errors: the pool does not know its URL (the host
/// named the database's servers when it connected, `tally_db::pg::connect`).
const SERVERS: &str = "the fleet's database";

/// Why `pool` gave no connection: the pool exhausted (every connection busy), or no server
/// reachable (`tally_db::pg::pool_error`).
fn pool_error(pool: &Pool) -> impl FnOnce(deadpool_postgres::PoolError) -> StoreError + '_ {
    move |e| crate::pg::pool_error(pool, SERVERS, e).into()
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
            let mut client = pool.get().await.map_err(pool_error(&pool))?;
            crate::migrate::postgres(&mut client, MIGRATIONS, MIGRATION_LOCK).await?;
        }
        let first = replication::check(&pool).await;
        if options.require_sync_replication {
            let assessed = first.as_ref().map_err(Clone::clone)?;
            if !assessed.survives_failover() {
                return Err(StoreError::Replication {
                    detail: format!(
                        "require_sync_replication is set, and the database's replication is {}: {}",
                        assessed.summary(),
                        assessed.warning().unwrap_or_else(|| {
                            "there is no standby; set up a synchronous standby (synchronous_standby_names) or turn the option off".into()
                        })
                    ),
                });
            }
        }
        let health = Arc::new(Health::default());
        let (jobs, rx) = Queue::new(4 * MAX_BATCH, Arc::clone(&health));
        let full: Arc<AtomicBool> = Arc::default();
        let served_by: Arc<str> = Arc::from(served_by);
        let stale: Arc<AtomicBool> = Arc::default();
        let size = RegistrySize {
            cap: options.registry_cap,
            estimate: 0,
            checked: None,
            full: Arc::clone(&full),
            stale: Arc::clone(&stale),
            time: options.time,
        };
        let event_cap: Arc<crate::event_cap::Shared> = Arc::default();
        let batcher = Batcher {
            pool: pool.clone(),
            conn: None,
            served_by: Arc::clone(&served_by),
            size,
        };
        tokio::spawn(crate::group_commit::run(
            batcher,
            rx,
            Arc::clone(&health),
            crate::event_cap::Tracker::new(options.event_cap, Arc::clone(&event_cap)),
        ));
        let shared: replication::Shared = Arc::new(std::sync::Mutex::new(None));
        tokio::spawn(replication::watch(
            pool.clone(),
            Arc::clone(&shared),
            Arc::clone(&health),
            jobs.downgrade(),
        ));
        Ok(Self {
            replication: shared,
            jobs: Some(jobs),
            pool,
            served_by,
            health,
            full,
            stale,
            time: options.time,
            event_cap: (options.event_cap, event_cap),
        })
    }

    /// Opens the fleet's database for reading only (status, clients, events, report while the
    /// hosts run): no batcher, no migration. Fails with [`StoreError::Missing`] when no host
    /// has created the schema yet, and with [`StoreError::TooNew`] / [`StoreError::NeedsUpgrade`]
    /// when the schema is not this build's.
    pub async fn open_read_only(pool: Pool, what: &str) -> Result<Self, StoreError> {
        let client = pool.get().await.map_err(pool_error(&pool))?;
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
            time: TimeSource::Database,
            replication: Arc::default(),
            event_cap: (0, Arc::default()),
        })
    }

    /// The name this host writes into the registry and the events.
    pub fn served_by(&self) -> &str {
        &self.served_by
    }

    async fn submit(
        &self,
        work: Work,
        budget: Option<std::time::Duration>,
    ) -> Result<Counted, StoreError> {
        let jobs = self.jobs.as_ref().ok_or_else(|| StoreError::ReadOnly {
            path: self.served_by.to_string(),
        })?;
        jobs.submit(work, budget)
            .await
            .map(crate::group_commit::Answer::counted)
    }

    fn writable(&self) -> Result<(), StoreError> {
        match self.jobs {
            Some(_) => Ok(()),
            None => Err(StoreError::ReadOnly {
                path: self.served_by.to_string(),
            }),
        }
    }

    /// A connection for a query outside the group commit (reads, direct maintenance writes).
    /// A writer's store (the running host) reports the outcome to its health, so a pool that is
    /// exhausted or a database that cannot be reached shows on `/metrics`, the dashboard and in
    /// the log as a commit failure does (issue 21 part 3); a read-only store (a command) only
    /// returns the error.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        let got = self.pool.get().await.map_err(pool_error(&self.pool));
        if self.jobs.is_some() {
            match &got {
                Ok(_) => self.health.query_ok(),
                Err(e) => self.health.query_failed(e),
            }
        }
        got
    }
}

const REGISTRY_COLUMNS: &str = "cmid, machine_name, sku, pool, first_seen, last_seen, last_result, last_count, activated, requests, served_by, clones";

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
        clones: u32::try_from(r.get::<_, i32>(11)).unwrap_or(0),
    }
}

/// [`Store::registry_census`]: one pass, the states as `tally_admin::view::ClientState::of`
/// sorts them (expired before overdue).
const CENSUS_SQL: &str = "SELECT sku, pool, count(*),
       count(*) FILTER (WHERE activated AND last_seen >= $1 AND last_seen >= $2),
       count(*) FILTER (WHERE activated AND last_seen >= $1 AND last_seen < $2),
       count(*) FILTER (WHERE CASE WHEN activated THEN last_seen < $1 ELSE first_seen < $3 END),
       count(*) FILTER (WHERE NOT activated AND first_seen >= $3)
  FROM registry GROUP BY sku, pool ORDER BY sku, pool";

/// A search: lower-cased machine names from `$3` (inclusive) to `$4` (exclusive) in byte
/// order, by the `registry_machine` index. Without a search the query has no condition (an
/// `IS NULL OR …` would keep a generic plan from using the index).
const NAME_PREFIX: &str =
    "WHERE lower(machine_name) COLLATE \"C\" >= $3 AND lower(machine_name) COLLATE \"C\" < $4";

impl PgStore {
    /// Registry rows of a query over `registry` selecting [`REGISTRY_COLUMNS`].
    async fn registry_rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<RegistryEntry>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(sql, params)
            .await
            .map_err(backend("read registry"))?;
        Ok(rows.iter().map(registry_row).collect())
    }
}

fn search_bounds(search: Option<String>) -> (Option<String>, Option<String>) {
    crate::prefix_bounds(search.map(|s| s.to_lowercase()).as_deref())
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
        // X5: on the database's clock, as the fleet counts (`now` only when tests drive time).
        let now = (self.time == TimeSource::Caller).then_some(now.millis());
        let lifetime = tally_core::counting::ENTRY_LIFETIME_MS;
        let rows = self
            .client()
            .await?
            .query(
                "SELECT p.pool, p.capacity, count(e.cmid)
                 FROM pools p LEFT JOIN pool_entries e ON e.pool = p.pool AND e.last_seen >
                     COALESCE($1::int8, (extract(epoch FROM clock_timestamp()) * 1000)::int8) - $2
                 GROUP BY p.pool, p.capacity ORDER BY p.pool",
                &[&now, &lifetime],
            )
            .await
            .map_err(backend("read pools"))?;
        Ok(rows
            .iter()
            // The bench pool is counted like any pool but shown nowhere (tally_core::bench).
            .filter(|r| !tally_core::bench::is_bench_pool(r.get(0)))
            .map(|r| PoolCount {
                pool: r.get(0),
                capacity: r.get::<_, i32>(1).max(0) as u32,
                count: u32::try_from(r.get::<_, i64>(2)).unwrap_or(u32::MAX),
            })
            .collect())
    }

    async fn commit(&self, changes: Changes) -> Result<Counted, StoreError> {
        self.submit(Work::Changes(Box::new(changes)), None).await
    }

    async fn commit_within(
        &self,
        changes: Changes,
        budget: std::time::Duration,
    ) -> Result<Counted, StoreError> {
        self.submit(Work::Changes(Box::new(changes)), Some(budget))
            .await
    }

    async fn registry(&self, page: RegistryPage) -> Result<Vec<RegistryEntry>, StoreError> {
        let order = match page.sort {
            RegistrySort::LastSeen => "last_seen DESC, cmid",
            RegistrySort::Machine => "lower(machine_name) COLLATE \"C\", cmid",
            RegistrySort::FirstSeen => "first_seen, cmid",
        };
        // The order comes from a closed enum, never from the request text.
        let limit = i64::from(page.limit);
        let offset = i64::try_from(page.offset).unwrap_or(i64::MAX);
        let (lo, hi) = search_bounds(page.search);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&limit, &offset];
        let filter = match (&lo, &hi) {
            (Some(lo), Some(hi)) => {
                params.extend([lo as &(dyn ToSql + Sync), hi]);
                NAME_PREFIX
            }
            _ => "",
        };
        let sql = format!(
            "SELECT {REGISTRY_COLUMNS} FROM registry {filter}
             ORDER BY {order} LIMIT $1 OFFSET $2"
        );
        self.registry_rows(&sql, &params).await
    }

    async fn registry_in_period(
        &self,
        from: Timestamp,
        to: Timestamp,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<RegistryEntry>, StoreError> {
        // From the start or after a CMID: two statements, so each page is a range of the
        // primary key in any plan (an `IS NULL OR` would not be, in a generic plan).
        let after_cmid = if after.is_some() { "cmid > $4 AND" } else { "" };
        let sql = format!(
            "SELECT {REGISTRY_COLUMNS} FROM registry
             WHERE {after_cmid} last_seen >= $1 AND first_seen < $2
             ORDER BY cmid LIMIT $3"
        );
        let (from, to, limit) = (from.millis(), to.millis(), i64::from(limit));
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&from, &to, &limit];
        if let Some(cmid) = &after {
            params.push(cmid);
        }
        self.registry_rows(&sql, &params).await
    }

    async fn registry_census(&self, cutoffs: CensusCutoffs) -> Result<Vec<CensusRow>, StoreError> {
        let (v, r, g) = (
            cutoffs.validity_before.millis(),
            cutoffs.renewal_before.millis(),
            cutoffs.grace_before.millis(),
        );
        let rows = self
            .client()
            .await?
            .query(CENSUS_SQL, &[&v, &r, &g])
            .await
            .map_err(backend("count registry by state"))?;
        let n = |row: &tokio_postgres::Row, i| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(rows
            .iter()
            .map(|row| CensusRow {
                sku: row.get(0),
                pool: row.get(1),
                machines: n(row, 2),
                activated: n(row, 3),
                renewal_overdue: n(row, 4),
                expired: n(row, 5),
                in_grace: n(row, 6),
            })
            .collect())
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
        let client = self.client().await?;
        let counted = match search_bounds(search) {
            (Some(lo), Some(hi)) => {
                // The page's condition, with the bounds as $1 and $2.
                let sql = format!(
                    "SELECT count(*) FROM registry {}",
                    NAME_PREFIX.replace("$3", "$1").replace("$4", "$2")
                );
                client.query_one(sql.as_str(), &[&lo, &hi]).await
            }
            _ => client.query_one("SELECT count(*) FROM registry", &[]).await,
        };
        let n: i64 = counted.map_err(backend("count registry"))?.get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn record_events(&self, events: Vec<Event>) -> Result<(), StoreError> {
        self.submit(Work::Events(events), None).await.map(|_| ())
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
        let n = self
            .client()
            .await?
            .execute("DELETE FROM events WHERE at < $1", &[&before.millis()])
            .await
            .map_err(backend("prune events"))?;
        // The next batch checks the cap (retention may have ended an episode).
        self.event_cap.1.check_soon();
        Ok(n)
    }

    fn event_cap(&self) -> crate::EventCapStatus {
        self.event_cap.1.status(self.event_cap.0)
    }

    fn storage_error(&self) -> Option<String> {
        self.health.error()
    }

    fn replication(&self) -> Option<crate::Replication> {
        self.replication
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn clock_evidence(&self) -> Result<ClockEvidence, StoreError> {
        clock::evidence(&self.client().await?).await
    }

    async fn trust_clock(&self, at: Timestamp) -> Result<u64, StoreError> {
        self.writable()?;
        clock::trust(&mut self.client().await?, at).await
    }

    fn registry_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    async fn prune_registry(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.writable()?;
        let n = self
            .client()
            .await?
            .query_one(
                "WITH r AS (DELETE FROM registry WHERE last_seen < $1 RETURNING 1),
                      b AS (DELETE FROM bench_registry WHERE last_seen < $1 RETURNING 1)
                 SELECT (SELECT count(*) FROM r) + (SELECT count(*) FROM b)",
                &[&before.millis()],
            )
            .await
            .map_err(backend("prune registry"))?
            .get::<_, i64>(0);
        let n = u64::try_from(n).unwrap_or(0);
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
