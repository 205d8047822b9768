//! `tally authority revoke` and `tally authority revocations` (X7).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use tally_authority::service::RevokeRequest;

use super::{DatabaseArg, service, service_err};
use crate::output;

/// What `tally authority revoke` takes.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["serial", "key", "certificate"])))]
pub struct RevokeArgs {
    /// The authority directory.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Where the authority keeps its state.
    #[command(flatten)]
    pub db: DatabaseArg,
    /// Revoke a key by serial: a host key's every certificate, or a MAK's activations.
    #[arg(long)]
    pub serial: Option<u32>,
    /// Revoke a key given as its text (the 25 characters that leaked), same as --serial.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Revoke one host certificate by its fingerprint (64 hex digits, from `tally host
    /// status` or the audit log): the key's other hosts keep serving.
    #[arg(long, value_name = "FINGERPRINT")]
    pub certificate: Option<String>,
    /// Why, in your words (kept in the audit log).
    #[arg(long)]
    pub reason: String,
    /// The reason code clients see: key_compromise, cessation_of_operation, withdrawn,
    /// superseded, unspecified.
    #[arg(long, default_value = "unspecified", value_name = "CODE")]
    pub code: String,
    /// Also write the new list to this file (for `tally host import-revocations`).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tally authority revoke`.
pub async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let svc = service(&args.dir, &args.db).await?;
    let req = RevokeRequest {
        reason: args.reason.clone(),
        code: Some(args.code.clone()),
    };
    let serial = match (&args.key, args.serial) {
        (Some(text), _) => Some(
            text.trim()
                .parse::<tally_core::keys::ProductKey>()
                .map_err(|e| anyhow::anyhow!("--key: {e}"))?
                .serial(),
        ),
        (None, s) => s,
    };
    let what = match (serial, &args.certificate) {
        (Some(serial), _) => {
            svc.revoke(serial, &req, "cli").await.map_err(service_err)?;
            format!("Key {serial} revoked")
        }
        (None, Some(fp)) => {
            let added = svc
                .revoke_certificate(fp, &req, "cli")
                .await
                .map_err(service_err)?;
            if added {
                format!("Certificate {} revoked", fp.trim())
            } else {
                format!("Certificate {} was already revoked", fp.trim())
            }
        }
        (None, None) => anyhow::bail!("give --serial, --key or --certificate"),
    };
    let list = svc.revocations().await.map_err(service_err)?;
    if let Some(out) = &args.out {
        write_list(out, &list.file)?;
    }
    if args.json {
        output::json(&list)?;
    } else {
        println!(
            "{what}; revocation list {} ({} entries){}. Hosts with revocations_url fetch it; give air-gapped hosts the file (`tally authority revocations --out FILE`, then `tally host import-revocations FILE`).",
            list.serial,
            list.entries.len(),
            args.out
                .as_ref()
                .map(|o| format!(" written to {}", o.display()))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

/// What `tally authority revocations` takes.
#[derive(Args)]
pub struct RevocationsArgs {
    /// The authority directory.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Where the authority keeps its state.
    #[command(flatten)]
    pub db: DatabaseArg,
    /// Write the signed list to this file: give it to hosts (`tally host
    /// import-revocations FILE`) and ship it beside the signed catalog in your software's
    /// updates (clients read `revocations.tally` next to their trust file).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tally authority revocations`.
pub async fn revocations(args: RevocationsArgs) -> anyhow::Result<()> {
    let list = service(&args.dir, &args.db)
        .await?
        .revocations()
        .await
        .map_err(service_err)?;
    if let Some(out) = &args.out {
        write_list(out, &list.file)?;
    }
    if args.json {
        output::json(&list)?;
        return Ok(());
    }
    println!(
        "Revocation list {} issued {} ({} entries)",
        list.serial,
        list.issued_at.to_rfc3339(),
        list.entries.len()
    );
    for e in &list.entries {
        println!("{:>5}  {}", e.id, e.description);
    }
    if let Some(out) = &args.out {
        println!("Written to {}.", out.display());
    }
    Ok(())
}

/// X4: the list is public (0644 whatever the umask), replaced atomically.
fn write_list(out: &Path, text: &str) -> anyhow::Result<()> {
    tally_authority::dir::write_public(out, text.as_bytes())
        .with_context(|| format!("cannot write {}", out.display()))
}
