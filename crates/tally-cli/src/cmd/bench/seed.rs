//! `tally bench --seed-registry ROWS --data-dir DIR`: a registry at scale (issue 14).
//!
//! Fills a new data directory's registry with synthetic machines of the demo catalog's first
//! server edition, then times what an admin asks of it: a page in each order, a search, a count
//! and one machine, each the median of [`RUNS`] runs through the store's public API (the same
//! calls the dashboard and `tally host clients` make). A host started on the directory then
//! shows its start time and per-request cost at that size.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tally_core::time::{Clock, SystemClock};
use tally_core::{Catalog, EditionKind};
use tally_store::sqlite::{SeedProgress, SqliteStore, seed_registry};
use tally_store::{RegistryPage, RegistrySort, Store};

use crate::output::{Table, json};

/// Runs of each timed query.
const RUNS: usize = 5;

#[derive(Serialize)]
struct Timing {
    query: &'static str,
    rows: usize,
    median_ms: f64,
    max_ms: f64,
}

#[derive(Serialize)]
struct SeedReport {
    data_dir: String,
    rows: u64,
    /// The edition of the seeded machines: `tally bench --sku` it to load their registry.
    sku: String,
    seed_seconds: f64,
    database_bytes: u64,
    queries: Vec<Timing>,
}

pub async fn run(rows: u64, dir: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let db = dir.join(tally_host::paths::HOST_DB);
    if db.exists() {
        bail!(
            "{} already has a database: --seed-registry only fills a new data directory, so \
             synthetic machines never reach a real host's registry or reports; choose a new \
             directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let catalog = Catalog::demo();
    let edition = catalog
        .editions()
        .iter()
        .find(|e| e.kind == EditionKind::Server)
        .context("the demo catalog has no server edition")?;
    let bar = if as_json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(rows)
    };
    bar.set_style(
        ProgressStyle::with_template("seeding {bar:40} {pos}/{len} rows  {per_sec}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let (path, sku, pool, now, shown) = (
        db.clone(),
        edition.sku,
        edition.pool,
        SystemClock.now(),
        bar.clone(),
    );
    let bytes = tokio::task::spawn_blocking(move || {
        seed_registry(&path, rows, sku, pool, now, |p| match p {
            SeedProgress::Rows(n) => shown.set_position(n),
            SeedProgress::Indexing => shown.set_message("building indexes…"),
        })
    })
    .await
    .context("the seeding thread failed")??;
    bar.finish_and_clear();
    let seed_seconds = started.elapsed().as_secs_f64();

    let store = SqliteStore::open_read_only(&db)?;
    let mut queries = Vec::new();
    let page = |sort| RegistryPage {
        limit: 50,
        sort,
        ..RegistryPage::default()
    };
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
    let search = RegistryPage {
        search: Some(format!("SEED-{:06}", rows / 200)),
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
        search: Some(format!("SEED-{:06}", rows / 200)),
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
            || store.registry_count(search.search.clone()),
            |_| 1,
        )
        .await?,
    );
    queries.push(time("count of all", || store.registry_len(), |_| 1).await?);
    let report = SeedReport {
        data_dir: dir.display().to_string(),
        rows,
        sku: edition.sku.to_string(),
        seed_seconds,
        database_bytes: bytes,
        queries,
    };
    if as_json {
        json(&report)?;
    } else {
        println!(
            "seeded {} machines into {} in {:.0} s; database {:.0} MB",
            report.rows,
            db.display(),
            report.seed_seconds,
            report.database_bytes as f64 / 1e6
        );
        let mut t = Table::new(&["QUERY", "ROWS", "MEDIAN MS", "MAX MS"]);
        for q in &report.queries {
            t.row(vec![
                q.query.to_owned(),
                q.rows.to_string(),
                format!("{:.2}", q.median_ms),
                format!("{:.2}", q.max_ms),
            ]);
        }
        print!("{}", t.render());
        println!(
            "next: tally host run --dev --data-dir {} (then: tally bench --host ADDR --sku {}, \
             whose machines go to this registry)",
            dir.display(),
            report.sku
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The median and the slowest of [`RUNS`] runs of `query`, in ms.
async fn time<T, F, Fut>(
    query: &'static str,
    run: F,
    rows: impl Fn(&T) -> usize,
) -> anyhow::Result<Timing>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, tally_store::StoreError>>,
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
