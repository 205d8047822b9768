//! `tally bench --seed-registry ROWS --data-dir DIR`: a registry at scale (issue 14). The work
//! is `tally_bench::seed`; this prints its progress and report.

use std::path::Path;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use tally_bench::seed::SeedProgress;

use crate::output::{Table, json};

pub async fn run(rows: u64, dir: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let bar = if as_json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(rows)
    };
    bar.set_style(
        ProgressStyle::with_template("seeding {bar:40} {pos}/{len} rows  {per_sec}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let shown = bar.clone();
    let report = tally_bench::seed::run(dir, rows, move |p| match p {
        SeedProgress::Rows(n) => shown.set_position(n),
        SeedProgress::Indexing => shown.set_message("building indexes…"),
    })
    .await;
    bar.finish_and_clear();
    let report = report?;
    if as_json {
        json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "seeded {} machines into {} in {:.0} s; database {:.0} MB",
        report.rows,
        report.database,
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
    Ok(ExitCode::SUCCESS)
}
