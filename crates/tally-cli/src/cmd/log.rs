//! `tally log verify`: check the authority's transparency log (X8) with nothing but the
//! authority's public key: no database, no authority directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use tally_client::authority::AuthorityClient;
use tally_core::transparency;
use tally_core::trust::{TrustAnchor, parse_authority_public, parse_certificate, to_hex};
use tally_log::{ConsistencyProof, InclusionProof, SignedTreeHead};

use crate::output;

/// `tally log ...`
#[derive(Subcommand)]
pub enum LogCommand {
    /// Check proofs of the authority's transparency log (X8) with only its public key.
    ///
    /// Inclusion: `--proof FILE` (a host's certificate.proof) shows that an entry is in a log
    /// head the authority signed; with `--certificate FILE` also that the entry is that
    /// certificate. Give --proof (and --certificate) several times to check many at once.
    ///
    /// Consistency: `--old HEAD` (a head you kept) and either `--new HEAD --consistency FILE`,
    /// or `--authority URL` to fetch the authority's current head and the proof; shows that
    /// the log only grew since the head you kept. A rewritten log (an entry changed or
    /// removed) fails here.
    Verify(VerifyArgs),
}

/// `tally log verify` arguments.
#[derive(Args)]
pub struct VerifyArgs {
    /// The authority public key file (authority.pub).
    #[arg(long, value_name = "FILE")]
    trust: PathBuf,
    /// An inclusion proof file (tally-log-inclusion-v1).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["old", "new", "consistency"])]
    proof: Vec<PathBuf>,
    /// The host certificate each --proof must be for (same order).
    #[arg(long, value_name = "FILE", requires = "proof")]
    certificate: Vec<PathBuf>,
    /// A signed tree head you kept (tally-tree-head-v1).
    #[arg(long, value_name = "FILE")]
    old: Option<PathBuf>,
    /// A newer signed tree head.
    #[arg(long, value_name = "FILE", requires = "old")]
    new: Option<PathBuf>,
    /// The consistency proof between --old and --new (tally-log-consistency-v1).
    #[arg(long, value_name = "FILE", requires = "new")]
    consistency: Option<PathBuf>,
    /// Fetch the newer head (unless --new) and the consistency proof from this authority.
    #[arg(
        long,
        value_name = "URL",
        requires = "old",
        conflicts_with = "consistency"
    )]
    authority: Option<String>,
    /// After a successful consistency check, write the newer head here (keep it for next time).
    #[arg(long, value_name = "FILE", requires = "old")]
    save_head: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// Runs a log command.
pub async fn run(cmd: LogCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LogCommand::Verify(args) => verify(args).await,
    }
}

async fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let anchor = parse_authority_public(&read(&a.trust, "the authority key")?)
        .with_context(|| format!("{}", a.trust.display()))?;
    if !a.proof.is_empty() {
        return inclusion(&anchor, &a);
    }
    if a.old.is_some() {
        return consistency(&anchor, &a).await;
    }
    bail!("say what to check: --proof FILE (inclusion) or --old HEAD (consistency); see --help")
}

fn inclusion(anchor: &TrustAnchor, a: &VerifyArgs) -> anyhow::Result<ExitCode> {
    if !a.certificate.is_empty() && a.certificate.len() != a.proof.len() {
        bail!(
            "give one --certificate per --proof ({} proofs, {} certificates)",
            a.proof.len(),
            a.certificate.len()
        );
    }
    let mut results = Vec::new();
    for (i, path) in a.proof.iter().enumerate() {
        let proof = InclusionProof::from_text(&read(path, "the proof")?)
            .with_context(|| format!("{}", path.display()))?;
        transparency::verify_inclusion(anchor, &proof)
            .with_context(|| format!("{} does not verify", path.display()))?;
        if let Some(cert_path) = a.certificate.get(i) {
            let cert = parse_certificate(&read(cert_path, "the certificate")?)
                .with_context(|| format!("{}", cert_path.display()))?;
            if !proof.entry.kind.is_host_certificate() || proof.entry.object != cert.to_bytes() {
                bail!(
                    "{} proves another entry than the certificate {} ({} entry {})",
                    path.display(),
                    cert_path.display(),
                    proof.entry.kind,
                    proof.index
                );
            }
        }
        results.push(json!({
            "proof": path,
            "certificate": a.certificate.get(i),
            "kind": proof.entry.kind.name(),
            "index": proof.index,
            "tree_size": proof.head.size,
            "root": to_hex(&proof.head.root),
            "head_signed_at": proof.head.timestamp_ms,
        }));
    }
    if a.json {
        output::json(&json!({ "verified": true, "inclusion": results }))?;
    } else {
        for r in &results {
            println!(
                "{}: verified: {} entry {} is in the authority's log (head of size {} signed by the trusted key){}",
                r["proof"].as_str().unwrap_or("?"),
                r["kind"].as_str().unwrap_or("?"),
                r["index"],
                r["tree_size"],
                r["certificate"]
                    .as_str()
                    .map(|c| format!("; it is the certificate {c}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn head(path: &Path) -> anyhow::Result<SignedTreeHead> {
    SignedTreeHead::from_text(&read(path, "the tree head")?)
        .with_context(|| format!("{}", path.display()))
}

async fn consistency(anchor: &TrustAnchor, a: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let Some(old_path) = &a.old else {
        bail!("--old HEAD is needed");
    };
    let old = head(old_path)?;
    let (new, proof) = match (&a.new, &a.consistency, &a.authority) {
        (Some(n), Some(c), _) => (
            head(n)?,
            ConsistencyProof::from_text(&read(c, "the consistency proof")?)
                .with_context(|| format!("{}", c.display()))?,
        ),
        (new, None, Some(url)) => {
            fetch(url, old.size, new.as_deref().map(head).transpose()?).await?
        }
        _ => bail!("give --new HEAD with --consistency FILE, or --authority URL to fetch them"),
    };
    transparency::verify_consistency(anchor, &old, &new, &proof).with_context(|| {
        format!(
            "consistency check of {} against the newer head failed",
            old_path.display()
        )
    })?;
    if let Some(out) = &a.save_head {
        std::fs::write(out, new.to_text())
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if a.json {
        output::json(&json!({
            "verified": true,
            "old_size": old.size,
            "new_size": new.size,
            "old_root": to_hex(&old.root),
            "new_root": to_hex(&new.root),
            "new_head": new.to_text().trim_end(),
        }))?;
    } else {
        println!(
            "Verified: the log of size {} extends the head of size {} you kept (append-only; both signed by the trusted key).",
            new.size, old.size
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The newer head (`new`, or the authority's current one) and the consistency proof to it.
async fn fetch(
    url: &str,
    old: u64,
    new: Option<SignedTreeHead>,
) -> anyhow::Result<(SignedTreeHead, ConsistencyProof)> {
    let client = AuthorityClient::new(url, Duration::from_secs(30))?;
    let query = match &new {
        Some(n) => format!("v1/log/consistency?old={old}&new={}", n.size),
        None => format!("v1/log/consistency?old={old}"),
    };
    let v = client
        .get(&query)
        .await
        .with_context(|| format!("cannot fetch the consistency proof from {url}"))?;
    let proof = ConsistencyProof::from_text(v["proof"].as_str().unwrap_or_default())
        .context("the authority's consistency proof")?;
    let head = match new {
        Some(n) => n,
        None => SignedTreeHead::from_text(v["head"].as_str().unwrap_or_default())
            .context("the authority's tree head")?,
    };
    Ok((head, proof))
}
