//! `tally host migrate --to URL`: arguments in, `tally_host::migrate` does the move, the result
//! printed (a progress bar on a terminal; `--json`).

use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::DirArgs;
use crate::output;

/// Runs the move and prints what was moved.
pub async fn migrate(
    dir: &DirArgs,
    to: &str,
    host_name: Option<&str>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let data_dir = dir.resolve()?;
    let total = tally_host::migrate::rows_to_move(&data_dir)?;
    let bar = if as_json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("moving {bar:40} {pos}/{len} rows  {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let shown = bar.clone();
    let moved = tally_host::migrate::to_fleet(&data_dir, to, host_name, &move |done| {
        shown.set_position(done);
    })
    .await;
    bar.finish_and_clear();
    let moved = moved?;
    let database = tally_host::migrate::describe(to);
    if as_json {
        output::json(&json!({
            "data_dir": data_dir,
            "database": format!("PostgreSQL {database}"),
            "moved": moved,
        }))?;
    } else {
        println!(
            "Moved {} pools, {} counted machines, {} registry rows, {} events and {} refusal counters into PostgreSQL {database}.",
            moved.pools, moved.pool_entries, moved.registry, moved.events, moved.refusals
        );
        println!(
            "{} now remembers that database: start the host with `tally host run --data-dir {}` (no --database needed). {} is left as it was.",
            data_dir.display(),
            data_dir.display(),
            data_dir.join("tally.db").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
