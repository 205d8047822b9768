//! The embedded SQLite backend.
//!
//! One dedicated writer thread owns the write connection. [`Store::commit`] hands it a job and
//! waits; the thread takes every job already queued (up to [`MAX_BATCH`]), applies them in one
//! transaction and commits once: group commit. While one fsync runs, the next batch queues up,
//! so throughput grows with concurrency instead of paying one fsync per request. Reads use a
//! second connection (WAL lets them run beside the writer).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};
use tally_core::counting::PoolSnapshot;
use tally_core::host::Changes;
use tally_core::time::Timestamp;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::{Event, EventQuery, RegistryEntry, RegistryPage, RegistrySort, Store, StoreError};

/// Most requests committed in one transaction.
pub const MAX_BATCH: usize = 512;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_events.sql"),
];

/// How hard commits go to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous = FULL`: survives power loss. The default.
    #[default]
    Full,
    /// `synchronous = NORMAL`: survives a process crash, may lose the last commits on power
    /// loss. For tests and benchmarks only.
    Normal,
}

enum Work {
    Changes(Changes),
    Events(Vec<Event>),
    /// Retention: delete events older than this (run alone, not in a batch).
    Prune(Timestamp),
}

struct Job {
    work: Work,
    /// The number of rows affected (prune) or 0.
    done: oneshot::Sender<Result<u64, StoreError>>,
}

/// The SQLite store. Cloning shares the same database and writer.
///
/// A store opened with [`SqliteStore::open_read_only`] has no writer: every write returns
/// [`StoreError::ReadOnly`], so a command that only looks at a running host's data can never
/// become a second writer or migrate the schema under it.
#[derive(Clone)]
pub struct SqliteStore {
    jobs: Option<mpsc::Sender<Job>>,
    reader: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn backend(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::Backend {
        operation,
        source: Arc::new(e),
    }
}

fn open_connection(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let open_err = |e: rusqlite::Error| StoreError::Open {
        path: path.display().to_string(),
        source: Arc::new(e),
    };
    let conn = Connection::open(path).map_err(open_err)?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA busy_timeout = 5000;"
    ))
    .map_err(open_err)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    crate::migrate::sqlite(conn, MIGRATIONS, path)
}

impl SqliteStore {
    async fn submit(&self, work: Work) -> Result<u64, StoreError> {
        let jobs = self.jobs.as_ref().ok_or_else(|| StoreError::ReadOnly {
            path: self.path.display().to_string(),
        })?;
        let (done, wait) = oneshot::channel();
        jobs.send(Job { work, done })
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// Opens an existing database for reading only: no writer thread, no migrations. For
    /// commands that look at a host's data while the host may be running (the host stays the
    /// one writer). Fails if the file does not exist or its schema is not this build's.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let open_err = |e: rusqlite::Error| StoreError::Open {
            path: path.display().to_string(),
            source: Arc::new(e),
        };
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.display().to_string(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(StoreError::TooNew {
                found: version,
                supported,
            });
        }
        if version < supported {
            return Err(StoreError::NeedsUpgrade {
                path: path.display().to_string(),
                found: version,
                supported,
            });
        }
        Ok(Self {
            jobs: None,
            reader: Arc::new(Mutex::new(conn)),
            path: Arc::new(path.to_owned()),
        })
    }

    /// Opens (creating and migrating if needed) the database at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let mut writer = open_connection(path, durability)?;
        migrate(&mut writer, path)?;
        let reader = open_connection(path, durability)?;
        let (jobs, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("tally-sqlite-writer".into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                source: Arc::new(e),
            })?;
        Ok(Self {
            jobs: Some(jobs),
            reader: Arc::new(Mutex::new(reader)),
            path: Arc::new(path.to_owned()),
        })
    }

    /// Writes a consistent copy of the database to `path` while the host keeps running
    /// (`VACUUM INTO`); `path` must not exist.
    pub async fn backup_to(&self, path: &Path) -> Result<(), StoreError> {
        let target = path.to_string_lossy().into_owned();
        self.read(move |conn| {
            conn.execute("VACUUM INTO ?1", params![target])
                .map(|_| ())
                .map_err(backend("backup"))
        })
        .await
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(PoisonError::into_inner);
            f(&conn)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        if let Work::Prune(before) = first.work {
            let result = conn
                .execute("DELETE FROM events WHERE at < ?1", params![before.millis()])
                .map(|n| n as u64)
                .map_err(backend("prune events"));
            let _ = first.done.send(result);
            continue;
        }
        let mut batch = vec![first];
        let mut deferred = None;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) if matches!(job.work, Work::Prune(_)) => {
                    deferred = Some(job);
                    break;
                }
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = apply_batch(&mut conn, &batch).map(|()| 0);
        if let Err(error) = &result {
            tracing::error!(%error, batch = batch.len(), "storage commit failed");
        }
        for job in batch {
            // The requester may have gone (connection closed); nothing to tell it then.
            let _ = job.done.send(result.clone());
        }
        if let Some(Job {
            work: Work::Prune(before),
            done,
        }) = deferred
        {
            let result = conn
                .execute("DELETE FROM events WHERE at < ?1", params![before.millis()])
                .map(|n| n as u64)
                .map_err(backend("prune events"));
            let _ = done.send(result);
        }
    }
}

fn apply_batch(conn: &mut Connection, batch: &[Job]) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(backend("begin"))?;
    for job in batch {
        match &job.work {
            Work::Changes(changes) => {
                apply(&tx, changes).map_err(backend("write"))?;
                // R27: event 12290 is written with the activation it describes.
                insert_event(&tx, &activation_event(changes)).map_err(backend("write event"))?;
            }
            Work::Events(events) => {
                for e in events {
                    insert_event(&tx, e).map_err(backend("write event"))?;
                }
            }
            Work::Prune(_) => {} // run alone by the writer loop, never batched
        }
    }
    tx.commit().map_err(backend("commit"))
}

fn apply(conn: &Connection, changes: &Changes) -> rusqlite::Result<()> {
    if let Some(t) = changes.table.as_ref().filter(|t| t.capacity_changed) {
        conn.prepare_cached(
            "INSERT INTO pool_capacity (pool, capacity) VALUES (?1, ?2)
             ON CONFLICT (pool) DO UPDATE SET capacity = max(capacity, excluded.capacity)",
        )?
        .execute(params![t.pool.as_bytes(), t.capacity])?;
    }
    if let Some(t) = &changes.table {
        conn.prepare_cached(
            "INSERT INTO pool_entries (pool, cmid, last_seen) VALUES (?1, ?2, ?3)
             ON CONFLICT (pool, cmid) DO UPDATE SET last_seen = excluded.last_seen",
        )?
        .execute(params![
            t.pool.as_bytes(),
            t.upsert.0.as_bytes(),
            t.upsert.1.millis()
        ])?;
        let mut delete =
            conn.prepare_cached("DELETE FROM pool_entries WHERE pool = ?1 AND cmid = ?2")?;
        for cmid in &t.removed {
            delete.execute(params![t.pool.as_bytes(), cmid.as_bytes()])?;
        }
    }
    let r = &changes.registry;
    conn.prepare_cached(
        "INSERT INTO registry (cmid, machine_name, sku, pool, license_state, first_seen, last_seen,
                               last_result, last_count, activated, requests)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, 1)
         ON CONFLICT (cmid) DO UPDATE SET
             machine_name = excluded.machine_name, sku = excluded.sku, pool = excluded.pool,
             license_state = excluded.license_state, last_seen = excluded.last_seen,
             last_result = excluded.last_result, last_count = excluded.last_count,
             activated = excluded.activated, requests = requests + 1",
    )?
    .execute(params![
        r.cmid.as_bytes(),
        r.machine_name,
        r.sku.as_bytes(),
        r.pool.as_bytes(),
        r.license_state as u8,
        r.seen_at.millis(),
        r.result.0,
        r.count,
        r.activated,
    ])?;
    Ok(())
}

/// R27: the 12290 event of an activation request.
fn activation_event(changes: &Changes) -> Event {
    let r = &changes.registry;
    Event {
        at: r.seen_at,
        event_id: 12290,
        level: "info".into(),
        message: format!("activation request from {}", r.machine_name),
        data: serde_json::json!({
            "machine": r.machine_name,
            "cmid": r.cmid,
            "sku": r.sku,
            "pool": r.pool,
            "result": r.result.name().unwrap_or("unknown"),
            "code": format!("0x{:08X}", r.result.0),
            "count": r.count,
            "activated": r.activated,
            "peer": r.peer,
        }),
    }
}

fn insert_event(conn: &Connection, e: &Event) -> rusqlite::Result<()> {
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

fn uuid_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<Uuid> {
    let bytes: Vec<u8> = row.get(idx)?;
    Uuid::from_slice(&bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Blob, Box::new(e))
    })
}

const REGISTRY_COLUMNS: &str = "cmid, machine_name, sku, pool, first_seen, last_seen, last_result, last_count, activated, requests";

fn registry_row(row: &Row<'_>) -> rusqlite::Result<RegistryEntry> {
    Ok(RegistryEntry {
        cmid: uuid_col(row, 0)?,
        machine_name: row.get(1)?,
        sku: uuid_col(row, 2)?,
        pool: uuid_col(row, 3)?,
        first_seen: Timestamp(row.get(4)?),
        last_seen: Timestamp(row.get(5)?),
        last_result: row.get(6)?,
        last_count: row.get(7)?,
        activated: row.get(8)?,
        requests: row.get::<_, i64>(9)?.max(0) as u64,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn load_tables(&self) -> Result<Vec<PoolSnapshot>, StoreError> {
        self.read(|conn| {
            let mut snapshots: Vec<PoolSnapshot> = conn
                .prepare("SELECT pool, capacity FROM pool_capacity ORDER BY pool")
                .and_then(|mut s| {
                    s.query_map([], |r| {
                        Ok(PoolSnapshot {
                            pool: uuid_col(r, 0)?,
                            capacity: r.get(1)?,
                            entries: Vec::new(),
                        })
                    })?
                    .collect()
                })
                .map_err(backend("load pools"))?;
            let mut stmt = conn
                .prepare("SELECT cmid, last_seen FROM pool_entries WHERE pool = ?1")
                .map_err(backend("load entries"))?;
            for snap in &mut snapshots {
                snap.entries = stmt
                    .query_map(params![snap.pool.as_bytes()], |r| {
                        Ok((uuid_col(r, 0)?, Timestamp(r.get(1)?)))
                    })
                    .and_then(Iterator::collect)
                    .map_err(backend("load entries"))?;
            }
            Ok(snapshots)
        })
        .await
    }

    async fn commit(&self, changes: Changes) -> Result<(), StoreError> {
        self.submit(Work::Changes(changes)).await.map(|_| ())
    }

    async fn record_events(&self, events: Vec<Event>) -> Result<(), StoreError> {
        self.submit(Work::Events(events)).await.map(|_| ())
    }

    async fn events(&self, query: EventQuery) -> Result<Vec<Event>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT at, event_id, level, message, data FROM events
                     WHERE at >= ?1 AND (?2 IS NULL OR event_id = ?2) ORDER BY at DESC, id DESC LIMIT ?3",
                )
                .map_err(backend("read events"))?;
            stmt.query_map(
                params![query.since.map_or(i64::MIN, Timestamp::millis), query.event_id, query.limit.max(1)],
                |r| {
                    let data: String = r.get(4)?;
                    Ok(Event {
                        at: Timestamp(r.get(0)?),
                        event_id: r.get(1)?,
                        level: r.get(2)?,
                        message: r.get(3)?,
                        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
                    })
                },
            )
            .and_then(Iterator::collect)
            .map_err(backend("read events"))
        })
        .await
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64, StoreError> {
        // Through the writer: only the writer thread writes the database.
        self.submit(Work::Prune(before)).await
    }

    async fn registry(&self, page: RegistryPage) -> Result<Vec<RegistryEntry>, StoreError> {
        self.read(move |conn| {
            let order = match page.sort {
                RegistrySort::LastSeen => "last_seen DESC, cmid",
                RegistrySort::Machine => "machine_name COLLATE NOCASE, cmid",
                RegistrySort::FirstSeen => "first_seen, cmid",
            };
            // The order comes from a closed enum, never from the request text.
            let sql = format!(
                "SELECT {REGISTRY_COLUMNS} FROM registry WHERE (?3 IS NULL OR instr(lower(machine_name), lower(?3)) > 0)
                 ORDER BY {order} LIMIT ?1 OFFSET ?2"
            );
            conn.prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_map(params![page.limit, page.offset as i64, page.search], registry_row)?.collect()
                })
                .map_err(backend("read registry"))
        })
        .await
    }

    async fn registry_count(&self, search: Option<String>) -> Result<u64, StoreError> {
        self.read(move |conn| {
            conn.query_row(
                "SELECT count(*) FROM registry WHERE (?1 IS NULL OR instr(lower(machine_name), lower(?1)) > 0)",
                params![search],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(backend("count registry"))
        })
        .await
    }

    async fn registry_entry(&self, cmid: Uuid) -> Result<Option<RegistryEntry>, StoreError> {
        self.read(move |conn| {
            let sql = format!("SELECT {REGISTRY_COLUMNS} FROM registry WHERE cmid = ?1");
            conn.prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_row(params![cmid.as_bytes()], registry_row)
                        .optional()
                })
                .map_err(backend("read registry"))
        })
        .await
    }

    async fn registry_len(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT count(*) FROM registry", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(backend("count registry"))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use tally_core::counting::CountTables;
    use tally_core::host::RegistryUpdate;
    use tally_proto::{LicenseState, ResultCode};

    use super::*;
    use crate::{Event, EventQuery};

    const POOL: Uuid = Uuid::from_u128(1);

    fn changes(tables: &mut CountTables, n: u128, now: i64) -> Changes {
        let cmid = Uuid::from_u128(100 + n);
        let (count, table) = tables.record(POOL, cmid, 5, Timestamp(now));
        Changes {
            table: Some(table),
            registry: RegistryUpdate {
                cmid,
                machine_name: format!("pc-{n}"),
                sku: Uuid::from_u128(9),
                pool: POOL,
                license_state: LicenseState::InitialGrace,
                seen_at: Timestamp(now),
                result: ResultCode::SUCCESS,
                count,
                activated: count >= 5,
                peer: Some("127.0.0.1:9".into()),
            },
        }
    }

    // R4, R5, R6: what is committed comes back after reopening, evictions included.
    #[tokio::test]
    async fn commits_survive_reopen_and_rebuild_the_same_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tally.db");
        let mut tables = CountTables::default();
        {
            let store = SqliteStore::open(&path, Durability::Full).expect("open");
            let mut waits = Vec::new();
            for n in 0..14 {
                let c = changes(&mut tables, n, n as i64);
                let s = store.clone();
                waits.push(tokio::spawn(async move { s.commit(c).await }));
            }
            for w in waits {
                w.await.expect("join").expect("commit");
            }
            assert_eq!(store.registry_len().await.expect("len"), 14);
        }
        let store = SqliteStore::open(&path, Durability::Full).expect("reopen");
        let rebuilt = CountTables::from_snapshots(store.load_tables().await.expect("load"));
        assert_eq!(
            rebuilt.summary(Timestamp(100)),
            tables.summary(Timestamp(100))
        );
        assert_eq!(rebuilt.summary(Timestamp(100)), vec![(POOL, 10, 10)]);
        let page = store
            .registry(RegistryPage {
                offset: 0,
                limit: 3,
                ..RegistryPage::default()
            })
            .await
            .expect("page");
        let found = store
            .registry(RegistryPage {
                limit: 10,
                search: Some("PC-1".into()),
                sort: RegistrySort::Machine,
                ..RegistryPage::default()
            })
            .await
            .expect("search");
        assert_eq!(
            found
                .iter()
                .map(|e| e.machine_name.as_str())
                .collect::<Vec<_>>(),
            ["pc-1", "pc-10", "pc-11", "pc-12", "pc-13"]
        );
        assert_eq!(
            store
                .registry_count(Some("pc-1".into()))
                .await
                .expect("count"),
            5
        );
        assert_eq!(
            page.iter()
                .map(|e| e.machine_name.as_str())
                .collect::<Vec<_>>(),
            ["pc-13", "pc-12", "pc-11"]
        );
        let e = store
            .registry_entry(Uuid::from_u128(113))
            .await
            .expect("entry")
            .expect("present");
        assert!(e.activated);
        assert_eq!(e.last_count, 10);
    }

    // R27: every committed activation has its 12290 event; events can be queried and pruned.
    #[tokio::test]
    async fn r27_events_are_recorded_queried_and_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("t.db"), Durability::Normal).expect("open");
        let mut tables = CountTables::default();
        for n in 0..3 {
            store
                .commit(changes(&mut tables, n, 1000 + n as i64))
                .await
                .expect("commit");
        }
        let own = Event {
            at: Timestamp(5000),
            event_id: 1000,
            level: "info".into(),
            message: "host started".into(),
            data: serde_json::json!({}),
        };
        store.record_events(vec![own]).await.expect("record");
        let all = store
            .events(EventQuery {
                limit: 100,
                ..EventQuery::default()
            })
            .await
            .expect("events");
        assert_eq!(
            all.iter().map(|e| e.event_id).collect::<Vec<_>>(),
            [1000, 12290, 12290, 12290]
        );
        assert_eq!(all[1].data["machine"], "pc-2");
        assert_eq!(all[1].data["peer"], "127.0.0.1:9");
        let q = EventQuery {
            since: Some(Timestamp(1001)),
            event_id: Some(12290),
            limit: 100,
        };
        assert_eq!(store.events(q).await.expect("events").len(), 2);
        assert_eq!(store.prune_events(Timestamp(1002)).await.expect("prune"), 2);
        assert_eq!(
            store
                .events(EventQuery {
                    limit: 100,
                    ..EventQuery::default()
                })
                .await
                .expect("events")
                .len(),
            2
        );
    }

    // One writer: a read-only store reads what the writer committed, never writes or migrates.
    #[tokio::test]
    async fn read_only_store_reads_but_never_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tally.db");
        let missing = SqliteStore::open_read_only(&path).expect_err("no file yet");
        assert!(matches!(missing, StoreError::Missing { .. }), "{missing}");
        assert!(
            !path.exists(),
            "a read-only open must not create the database"
        );
        let writer = SqliteStore::open(&path, Durability::Normal).expect("open");
        let mut tables = CountTables::default();
        writer
            .commit(changes(&mut tables, 1, 10))
            .await
            .expect("commit");
        let reader = SqliteStore::open_read_only(&path).expect("read-only");
        assert_eq!(reader.registry_len().await.expect("len"), 1);
        let err = reader.record_events(vec![]).await.expect_err("read-only");
        assert!(matches!(err, StoreError::ReadOnly { .. }), "{err}");
        let err = reader
            .prune_events(Timestamp(i64::MAX))
            .await
            .expect_err("read-only");
        assert!(matches!(err, StoreError::ReadOnly { .. }), "{err}");
        // Retention goes through the writer.
        assert_eq!(
            writer
                .prune_events(Timestamp(i64::MAX))
                .await
                .expect("prune"),
            1
        );
    }

    #[test]
    fn a_newer_schema_is_refused_with_advice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tally.db");
        Connection::open(&path)
            .and_then(|c| c.execute_batch("PRAGMA user_version = 99"))
            .expect("setup");
        let err = SqliteStore::open(&path, Durability::Full).expect_err("too new");
        assert!(err.to_string().contains("upgrade Tally"), "{err}");
    }
}
