//! Seeding a scratch database's registry with synthetic machines, to measure a host at registry
//! scale (`tally bench --seed-registry`, issue 14). Never run on a real host's database: the CLI
//! only seeds a data directory that has no database yet.
//!
//! The rows go in in CMID order, in transactions of [`CHUNK`] rows, with the registry's
//! secondary indexes dropped and built again at the end (a sort each, instead of ten million
//! random index inserts): 10 million rows in about a minute and a half on the bench machine.

use rusqlite::{Connection, params};
use tally_core::time::{DAY_MS, Timestamp};
use uuid::Uuid;

use super::writer::{Alone, Work};
use super::{SqliteStore, backend};
use crate::StoreError;

/// Rows per transaction.
pub const CHUNK: u64 = 100_000;

/// What the seeding reports as it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedProgress {
    /// Rows inserted so far.
    Rows(u64),
    /// All rows in; building the indexes (the last, silent minute).
    Indexing,
}

/// The registry's secondary indexes (migrations 0001 and 0004), dropped while seeding.
const INDEXES: &[(&str, &str)] = &[
    ("registry_last_seen", "registry (last_seen)"),
    ("registry_name", "registry (machine_name COLLATE NOCASE)"),
    ("registry_first_seen", "registry (first_seen)"),
];

/// What the store's writer runs to seed (`SqliteStore::seed_registry`).
pub(super) struct Seed {
    pub(super) rows: u64,
    pub(super) sku: Uuid,
    pub(super) pool: Uuid,
    pub(super) now: Timestamp,
    pub(super) progress: Box<dyn FnMut(SeedProgress) + Send>,
}

impl SqliteStore {
    /// Adds `rows` machines named `seed-00000001`… of edition `sku` in `pool`, first and last
    /// seen spread over the 180 days before `now`, to this store's registry, through its writer
    /// (the one connection that writes the database; nothing else is written meanwhile).
    /// `progress` is called from the writer's thread. Returns the database's size in bytes
    /// afterwards.
    pub async fn seed_registry(
        &self,
        rows: u64,
        sku: Uuid,
        pool: Uuid,
        now: Timestamp,
        progress: impl FnMut(SeedProgress) + Send + 'static,
    ) -> Result<u64, StoreError> {
        let seed = Seed {
            rows,
            sku,
            pool,
            now,
            progress: Box::new(progress),
        };
        self.submit(Work::Alone(Alone::Seed(seed))).await?;
        Ok(std::fs::metadata(self.path.as_ref())
            .map(|m| m.len())
            .unwrap_or(0))
    }
}

/// Runs `seed` on the writer's connection. The caller opens the connection again afterwards
/// (the pragmas set here are for the seeding only).
pub(super) fn run(conn: &mut Connection, mut seed: Seed) -> Result<(), StoreError> {
    let Seed {
        rows,
        sku,
        pool,
        now,
        ..
    } = seed;
    conn.execute_batch("PRAGMA synchronous = OFF; PRAGMA cache_size = -262144;")
        .map_err(backend("seed"))?;
    for (name, _) in INDEXES {
        conn.execute_batch(&format!("DROP INDEX IF EXISTS {name}"))
            .map_err(backend("seed: drop index"))?;
    }
    let span = 180 * DAY_MS;
    let mut done = 0u64;
    while done < rows {
        let tx = conn.transaction().map_err(backend("seed: begin"))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO registry (cmid, machine_name, sku, pool, license_state,
                         first_seen, last_seen, last_result, last_count, activated, requests)
                     VALUES (?1, ?2, ?3, ?4, 2, ?5, ?6, 0, 25, 1, ?7)",
                )
                .map_err(backend("seed: prepare"))?;
            for i in done..rows.min(done + CHUNK) {
                let mix = splitmix(i);
                // CMIDs ascend with i (a sequential B-tree fill); the low half is arbitrary.
                let cmid = Uuid::from_u128((u128::from(i) << 64) | u128::from(mix));
                let first = now.millis() - (mix % span as u64) as i64;
                let last = first + ((mix >> 20) % ((now.millis() - first) as u64 + 1)) as i64;
                insert
                    .execute(params![
                        cmid.as_bytes(),
                        format!("seed-{i:08}"),
                        sku.as_bytes(),
                        pool.as_bytes(),
                        first,
                        last,
                        1 + ((mix >> 40) % 30) as i64,
                    ])
                    .map_err(backend("seed: insert"))?;
            }
        }
        tx.commit().map_err(backend("seed: commit"))?;
        done = rows.min(done + CHUNK);
        (seed.progress)(SeedProgress::Rows(done));
    }
    (seed.progress)(SeedProgress::Indexing);
    for (name, on) in INDEXES {
        conn.execute_batch(&format!("CREATE INDEX IF NOT EXISTS {name} ON {on}"))
            .map_err(backend("seed: build index"))?;
    }
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")
        .map_err(backend("seed: checkpoint"))
}

/// A well-mixed 64-bit value from `i` (SplitMix64's finaliser): deterministic seeds.
fn splitmix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RegistryPage, Store};

    #[tokio::test]
    async fn seeded_rows_are_listed_searched_and_indexed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tally.db");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let now = Timestamp(1_800_000_000_000);
        let store = SqliteStore::open(&path, super::super::Durability::Normal).expect("open");
        let log = std::sync::Arc::clone(&seen);
        let bytes = store
            .seed_registry(
                250_001,
                Uuid::from_u128(9),
                Uuid::from_u128(1),
                now,
                move |p| log.lock().expect("lock").push(p),
            )
            .await
            .expect("seed");
        assert!(bytes > 0);
        {
            let seen = seen.lock().expect("lock");
            assert_eq!(seen.last(), Some(&SeedProgress::Indexing));
            assert!(seen.contains(&SeedProgress::Rows(250_001)));
        }
        assert_eq!(store.registry_len().await.expect("len"), 250_001);
        assert_eq!(
            store
                .registry_count(Some("SEED-0000100".into()))
                .await
                .expect("search"),
            10
        );
        let page = store
            .registry(RegistryPage {
                limit: 5,
                ..RegistryPage::default()
            })
            .await
            .expect("page");
        assert!(
            page.iter()
                .all(|e| e.last_seen <= now && e.first_seen <= e.last_seen)
        );
        // The indexes are back: the plan for a search uses registry_name.
        let conn = rusqlite::Connection::open(&path).expect("conn");
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT cmid FROM registry
                 WHERE machine_name COLLATE NOCASE >= 'a' AND machine_name COLLATE NOCASE < 'b'",
                [],
                |r| r.get(3),
            )
            .expect("plan");
        assert!(plan.contains("registry_name"), "{plan}");
    }
}
