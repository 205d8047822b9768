//! `tally authority log`: the authority's transparency log (X8) as its operator sees it: a head
//! signed now and the entries, page by page.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;
use tally_core::time::Timestamp;
use tally_core::trust::{sha256, to_hex};
use tally_log::EntryKind;
use tally_proto::HostCertificate;

use crate::output;

/// `tally authority log` arguments.
#[derive(clap::Args)]
pub struct LogArgs {
    /// The authority directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Where the authority keeps its state.
    #[command(flatten)]
    db: super::authority::DatabaseArg,
    /// First entry shown.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Entries shown (at most 1000).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Also write the signed tree head to FILE (keep it: `tally log verify --old FILE` later
    /// shows whether the log was rewritten since).
    #[arg(long, value_name = "FILE")]
    head_out: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// What an entry's object is, in a few words.
fn summary(kind: EntryKind, object: &[u8]) -> String {
    if kind.is_host_certificate()
        && let Ok(c) = HostCertificate::from_bytes(object)
    {
        return format!(
            "host key serial {} group {} gen {}, host {}",
            c.body.key_serial,
            c.body.key_group,
            c.body.generation,
            to_hex(&c.body.host_key[..8])
        );
    }
    format!(
        "{} bytes, sha256 {}",
        object.len(),
        &to_hex(&sha256(object))[..16]
    )
}

/// Runs `tally authority log`.
pub async fn run(a: LogArgs) -> anyhow::Result<ExitCode> {
    let svc = super::authority::service(&a.dir, &a.db).await?;
    let head = svc
        .log_head(None)
        .await
        .map_err(super::authority::service_err)?;
    let entries = svc
        .log_entries(a.from, a.limit)
        .await
        .map_err(super::authority::service_err)?;
    if let Some(out) = &a.head_out {
        tally_authority::dir::write_public(out, head.to_text().as_bytes())
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if a.json {
        let list: Vec<_> = entries
            .iter()
            .map(|e| {
                json!({
                    "index": e.index,
                    "kind": e.entry.kind.name(),
                    "timestamp_ms": e.entry.timestamp_ms,
                    "object": to_hex(&e.entry.object),
                    "object_sha256": to_hex(&sha256(&e.entry.object)),
                    "leaf_hash": to_hex(&e.leaf_hash),
                })
            })
            .collect();
        output::json(&json!({
            "head": {
                "size": head.size,
                "root": to_hex(&head.root),
                "timestamp_ms": head.timestamp_ms,
                "signed": head.to_text().trim_end(),
            },
            "from": a.from,
            "entries": list,
        }))?;
    } else {
        println!(
            "Log head: {} entries, root {}, signed {}",
            head.size,
            to_hex(&head.root),
            Timestamp(head.timestamp_ms).to_rfc3339()
        );
        let mut t = output::Table::new(&["INDEX", "KIND", "LOGGED", "OBJECT"]);
        for e in &entries {
            t.row(vec![
                e.index.to_string(),
                e.entry.kind.name().to_owned(),
                Timestamp(e.entry.timestamp_ms).to_rfc3339(),
                summary(e.entry.kind, &e.entry.object),
            ]);
        }
        print!("{}", t.render());
        let shown_to = a.from + entries.len() as u64;
        if shown_to < head.size {
            println!(
                "Entries {}..{} of {}; next page: --from {shown_to}",
                a.from, shown_to, head.size
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
