//! `tally catalog`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;
use tally_core::Catalog;

use crate::output::{Table, json};

/// Catalog options shared by several commands.
#[derive(Args, Clone, Debug, Default)]
pub struct CatalogArg {
    /// Catalog file (TOML); the built-in demo catalog when omitted.
    #[arg(long, env = "TALLY_CATALOG", value_name = "FILE")]
    pub catalog: Option<PathBuf>,
}

impl CatalogArg {
    /// Loads the chosen catalog.
    pub fn load(&self) -> anyhow::Result<Catalog> {
        load(self.catalog.as_deref())
    }

    /// X7: `revocations.tally` beside the catalog file, where the vendor's updates put the
    /// newest signed revocation list.
    pub fn revocations_file(&self) -> Option<PathBuf> {
        let catalog = self.catalog.as_deref()?;
        Some(
            catalog
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join("revocations.tally"),
        )
    }
}

/// Loads a catalog file, or the demo catalog (the host's loader: one parser for every
/// command).
pub fn load(path: Option<&Path>) -> anyhow::Result<Catalog> {
    Ok(tally_host::catalog::load_file(path)?)
}

/// `tally catalog ...`
#[derive(Subcommand)]
pub enum CatalogCommand {
    /// List the editions: kind, key group, generation, threshold and setup key.
    List {
        #[command(flatten)]
        catalog: CatalogArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct EditionRow<'a> {
    sku: uuid::Uuid,
    name: &'a str,
    kind: String,
    pool: uuid::Uuid,
    pool_name: &'a str,
    group: &'a str,
    generation: u8,
    threshold: u16,
    setup_key: String,
}

/// Runs a catalog command.
pub fn run(cmd: CatalogCommand) -> anyhow::Result<ExitCode> {
    let CatalogCommand::List {
        catalog,
        json: as_json,
    } = cmd;
    let catalog = catalog.load()?;
    let rows: Vec<EditionRow<'_>> = catalog
        .editions()
        .iter()
        .map(|e| EditionRow {
            sku: e.sku,
            name: &e.name,
            kind: e.kind.to_string(),
            pool: e.pool,
            pool_name: catalog.pool(e.pool).map_or("?", |p| p.name.as_str()),
            group: e.group.name(),
            generation: e.generation,
            threshold: e.threshold,
            setup_key: e.setup_key.to_string(),
        })
        .collect();
    if as_json {
        json(&rows)?;
    } else {
        println!("{} (version {})\n", catalog.name(), catalog.version());
        let mut t = Table::new(&[
            "EDITION",
            "KIND",
            "POOL",
            "GROUP",
            "GEN",
            "THRESHOLD",
            "SETUP KEY",
        ]);
        for r in &rows {
            t.row(vec![
                r.name.to_owned(),
                r.kind.clone(),
                r.pool_name.to_owned(),
                r.group.to_owned(),
                r.generation.to_string(),
                r.threshold.to_string(),
                r.setup_key.clone(),
            ]);
        }
        print!("{}", t.render());
    }
    Ok(ExitCode::SUCCESS)
}
