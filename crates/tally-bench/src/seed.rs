//! A registry at scale (issue 14): fills a new data directory's registry with synthetic
//! machines of the demo catalog's first server edition, through the store's writer, then
//! times what an admin asks of it: a page in each order, a search, a count, each the median of
//! [`RUNS`] runs through the store's public API (the same calls the dashboard and
//! `tally host clients` make). A host started on the directory then shows its start time and
//! per-request cost at that size.

use std::future::Future;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use tally_core::time::{Clock, SystemClock};
use tally_core::{Catalog, EditionKind};
pub use tally_store::sqlite::SeedProgress;
use tally_store::sqlite::{Durability, SqliteStore};
use tally_store::{RegistryPage, RegistrySort, Store, StoreError};

use crate::BenchError;

/// Runs of each timed query.
pub const RUNS: usize = 5;

/// One timed query.
#[derive(Serialize, Clone, Debug)]
pub struct Timing {
    /// What was asked.
    pub query: &'static str,
    /// Rows it returned.
    pub rows: usize,
    /// Median of [`RUNS`] runs, ms.
    pub median_ms: f64,
    /// Slowest run, ms.
    pub max_ms: f64,
}

/// What seeding did and measured.
#[derive(Serialize, Clone, Debug)]
pub struct SeedReport {
    /// The data directory filled.
    pub data_dir: String,
    /// Its database file.
    pub database: String,
    /// Machines added.
    pub rows: u64,
    /// The edition of the seeded machines: `tally bench --sku` it to load their registry.
    pub sku: String,
    /// Seconds the seeding took.
    pub seed_seconds: f64,
    /// The database's size afterwards.
    pub database_bytes: u64,
    /// The timed queries.
    pub queries: Vec<Timing>,
}

/// Seeds `rows` machines into the new data directory `dir` and times the admin's queries on
/// them. Refuses a directory that already has a database, so synthetic machines never reach a
/// real host's registry or reports. `progress` is called from the store's writer thread.
pub async fn run(
    dir: &Path,
    rows: u64,
    progress: impl FnMut(SeedProgress) + Send + 'static,
) -> Result<SeedReport, BenchError> {
    let db = dir.join(tally_host::paths::HOST_DB);
    if db.exists() {
        return Err(BenchError::NotNew(dir.display().to_string()));
    }
    std::fs::create_dir_all(dir).map_err(|source| BenchError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let catalog = Catalog::demo();
    let edition = catalog
        .editions()
        .iter()
        .find(|e| e.kind == EditionKind::Server)
        .ok_or(BenchError::NoEdition("server"))?;
    let started = Instant::now();
    let store = SqliteStore::open(&db, Durability::Normal)?;
    let bytes = store
        .seed_registry(rows, edition.sku, edition.pool, SystemClock.now(), progress)
        .await?;
    let seed_seconds = started.elapsed().as_secs_f64();
    let queries = time_queries(&store, rows).await?;
    Ok(SeedReport {
        data_dir: dir.display().to_string(),
        database: db.display().to_string(),
        rows,
        sku: edition.sku.to_string(),
        seed_seconds,
        database_bytes: bytes,
        queries,
    })
}

async fn time_queries(store: &SqliteStore, rows: u64) -> Result<Vec<Timing>, BenchError> {
    let page = |sort| RegistryPage {
        limit: 50,
        sort,
        ..RegistryPage::default()
    };
    let mut queries = Vec::new();
    for (query, sort) in [
        ("page, last seen first", RegistrySort::LastSeen),
        ("page, by machine", RegistrySort::Machine),
        ("page, first seen first", RegistrySort::FirstSeen),
    ] {
        queries.push(time(query, || store.registry(page(sort)), Vec::len).await?);
    }
    let deep = RegistryPage {
        offset: 10_000,
        ..page(RegistrySort::LastSeen)
    };
    queries.push(
        time(
            "page at offset 10000",
            || store.registry(deep.clone()),
            Vec::len,
        )
        .await?,
    );
    let name = format!("SEED-{:06}", rows / 200);
    let search = RegistryPage {
        search: Some(name.clone()),
        ..page(RegistrySort::Machine)
    };
    queries.push(
        time(
            "search (name prefix)",
            || store.registry(search.clone()),
            Vec::len,
        )
        .await?,
    );
    let recent = RegistryPage {
        search: Some(name.clone()),
        ..page(RegistrySort::LastSeen)
    };
    queries.push(
        time(
            "search, last seen first",
            || store.registry(recent.clone()),
            Vec::len,
        )
        .await?,
    );
    // A prefix a tenth of ten million machines share, as a site's naming scheme would.
    let broad = RegistryPage {
        search: Some("seed-00".into()),
        ..page(RegistrySort::LastSeen)
    };
    queries.push(
        time(
            "broad search (seed-00), last seen first",
            || store.registry(broad.clone()),
            Vec::len,
        )
        .await?,
    );
    queries.push(
        time(
            "count of a search",
            || store.registry_count(Some(name.clone())),
            |_| 1,
        )
        .await?,
    );
    queries.push(time("count of all", || store.registry_len(), |_| 1).await?);
    Ok(queries)
}

/// The median and the slowest of [`RUNS`] runs of `query`, in ms.
async fn time<T, F, Fut>(
    query: &'static str,
    run: F,
    rows: impl Fn(&T) -> usize,
) -> Result<Timing, BenchError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut ms = Vec::with_capacity(RUNS);
    let mut n = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        let out = run().await?;
        ms.push(started.elapsed().as_secs_f64() * 1e3);
        n = rows(&out);
    }
    ms.sort_by(f64::total_cmp);
    Ok(Timing {
        query,
        rows: n,
        median_ms: ms[RUNS / 2],
        max_ms: ms[RUNS - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn seeds_a_new_directory_once_and_times_its_queries() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("scale");
        let report = run(&dir, 1_000, |_| {}).await.expect("seed");
        assert_eq!(report.rows, 1_000);
        assert!(report.database_bytes > 0);
        let count = report
            .queries
            .iter()
            .find(|q| q.query == "page, by machine")
            .expect("page");
        assert_eq!(count.rows, 50);
        // A second run on the same directory is refused and adds nothing.
        assert!(matches!(
            run(&dir, 10, |_| {}).await,
            Err(BenchError::NotNew(_))
        ));
        let store =
            SqliteStore::open_read_only(&dir.join(tally_host::paths::HOST_DB)).expect("open");
        assert_eq!(store.registry_len().await.expect("len"), 1_000);
    }
}
