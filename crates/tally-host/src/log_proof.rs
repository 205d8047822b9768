//! The host's proof that its certificate is in the authority's transparency log (X8).
//!
//! An online activation's answer carries the inclusion proof of the certificate's log entry;
//! the host checks it under the authority key it trusts (the head's signature, the Merkle path,
//! and that the logged object is byte for byte the certificate it installed) and keeps it as
//! `DATA_DIR/certificate.proof`. An offline activation (confirmation ID) cannot carry a proof;
//! such a host, or any host that wants a proof against a newer head, fetches one later with
//! `tally host log-proof --authority URL`, which asks for the entry holding the certificate by
//! its SHA-256. `tally host status` says which of these applies.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tally_client::authority::AuthorityClient;
use tally_core::transparency::verify_inclusion;
use tally_core::trust::{parse_authority_public, parse_certificate, sha256, to_hex};
use tally_log::InclusionProof;
use tally_proto::HostCertificate;

use crate::{HostError, paths};

/// How long fetching a proof may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The command that fetches a proof, for messages.
pub const FETCH_HINT: &str = "tally host log-proof --authority URL";

fn read(dir: &Path, name: &str) -> Result<String, HostError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(HostError::read(&path))
}

/// Checks `proof_text` for `cert` under the authority key in `anchor_text`.
pub fn check(
    cert: &HostCertificate,
    proof_text: &str,
    anchor_text: &str,
) -> Result<InclusionProof, HostError> {
    let anchor = parse_authority_public(anchor_text)
        .map_err(|e| HostError::Invalid(format!("the authority key is damaged: {e}")))?;
    let proof = InclusionProof::from_text(proof_text)
        .map_err(|e| HostError::Invalid(format!("the log proof is damaged: {e}")))?;
    if !proof.entry.kind.is_host_certificate() || proof.entry.object != cert.to_bytes() {
        return Err(HostError::Certificate(
            "the log proof is for another object than this host's certificate".into(),
        ));
    }
    verify_inclusion(&anchor, &proof)
        .map_err(|e| HostError::Certificate(format!("the log proof does not verify: {e}")))?;
    Ok(proof)
}

/// Checks `proof_text` against the certificate and authority key installed in `dir`, then
/// writes it to `DATA_DIR/certificate.proof`.
pub fn install(dir: &Path, proof_text: &str) -> Result<InclusionProof, HostError> {
    let cert = parse_certificate(&read(dir, paths::HOST_CERT)?)
        .map_err(|e| HostError::Certificate(e.to_string()))?;
    let proof = check(&cert, proof_text, &read(dir, paths::AUTHORITY_PUB)?)?;
    let path = dir.join(paths::CERTIFICATE_PROOF);
    tally_store::fsmode::write_atomic(
        &path,
        proof.to_text().as_bytes(),
        tally_store::fsmode::PUBLIC_FILE,
    )
    .map_err(HostError::write(&path))?;
    Ok(proof)
}

/// Removes a kept proof (the certificate it was for was replaced).
pub fn forget(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(paths::CERTIFICATE_PROOF));
}

/// Fetches the proof of the installed certificate from the authority at `url` (against its
/// current head), checks it and keeps it.
pub async fn fetch(dir: &Path, url: &str) -> Result<InclusionProof, HostError> {
    let cert = parse_certificate(&read(dir, paths::HOST_CERT)?)
        .map_err(|e| HostError::Certificate(e.to_string()))?;
    let client = AuthorityClient::new(url, TIMEOUT)?;
    let v = client
        .get(&format!(
            "v1/log/inclusion?object_sha256={}",
            to_hex(&sha256(&cert.to_bytes()))
        ))
        .await?;
    let text = v["proof"]
        .as_str()
        .ok_or_else(|| HostError::Invalid("the authority's answer has no proof".into()))?;
    install(dir, text)
}

/// What `tally host status` shows about the log proof.
pub fn status(dir: &Path) -> Value {
    let file = dir.join(paths::CERTIFICATE_PROOF);
    let Ok(text) = std::fs::read_to_string(&file) else {
        return json!({
            "proven": false,
            "reason": "no log proof kept (an offline activation, or an authority without a log)",
            "fix": FETCH_HINT,
        });
    };
    let checked = read(dir, paths::HOST_CERT)
        .and_then(|c| parse_certificate(&c).map_err(|e| HostError::Certificate(e.to_string())))
        .and_then(|cert| check(&cert, &text, &read(dir, paths::AUTHORITY_PUB)?));
    match checked {
        Ok(p) => json!({
            "proven": true,
            "file": file,
            "index": p.index,
            "tree_size": p.head.size,
            "root": to_hex(&p.head.root),
            "head_signed_at": p.head.timestamp_ms,
        }),
        Err(e) => json!({
            "proven": false,
            "file": file,
            "reason": e.to_string(),
            "fix": FETCH_HINT,
        }),
    }
}
