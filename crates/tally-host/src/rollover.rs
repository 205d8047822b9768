//! Root rollover on the host (X8): the statements that hand trust from the root in
//! `DATA_DIR/authority.pub` to newer roots, kept as `DATA_DIR/authority.rollover`.
//!
//! `tally host import-rollover FILE` verifies a rollover file from the host's root and keeps
//! what verifies; `tally host activate --trust FILE` and `install-cert --trust FILE` also read
//! the file beside the trust file (`authority.pub` → `authority.rollover`). Every check the
//! host makes against its authority (certificates, offline confirmations, signed catalogs)
//! goes through [`anchor`], so a host that trusted root A accepts what root B signed once it
//! has A's statement handing trust to B. The same file in the data directory is where the
//! delivery through the protocol stores what it accepted ([`import`]).

use std::path::Path;

use tally_core::rollover::{Chain, parse_file};
use tally_core::trust::{TrustAnchor, authority_id, parse_authority_public, to_hex};
use tally_store::fsmode;
use tracing::{info, warn};

use crate::HostError;
use crate::paths;

/// File name of the accepted rollover statements in the data directory.
pub const ROLLOVER_FILE: &str = "authority.rollover";

/// What an import did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Imported {
    /// Statements newly accepted.
    pub added: usize,
    /// Statements in the chain now.
    pub chain_length: usize,
    /// The id of the newest trusted root, hex.
    pub current_root_id: String,
}

/// The chain kept in `dir`, verified from the root in `anchor_text`; statements that do not
/// verify from it are left out (logged).
pub fn chain(dir: &Path, anchor_text: &str) -> Result<Chain, HostError> {
    let root = parse_authority_public(anchor_text)
        .map_err(|e| HostError::Invalid(format!("the authority key is damaged: {e}")))?;
    let mut chain = Chain::new(*root.key());
    let path = dir.join(ROLLOVER_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        match parse_file(&text) {
            Ok(statements) => {
                for (_, error) in chain.accept_all(&statements).1 {
                    warn!(path = %path.display(), %error, "rollover statement ignored");
                }
            }
            Err(error) => warn!(path = %path.display(), %error, "rollover file ignored"),
        }
    }
    Ok(chain)
}

/// The anchor for the root in `anchor_text`, extended by the rollovers kept in `dir`.
pub fn anchor(dir: &Path, anchor_text: &str) -> Result<TrustAnchor, HostError> {
    Ok(chain(dir, anchor_text)?.into_anchor())
}

/// The chain kept in `dir` as the host relays it to clients (X8, PROTOCOL.md "DocumentChunk",
/// document 2): the 185-byte statements, oldest first; empty when there is none.
pub fn relayed(dir: &Path) -> Vec<u8> {
    let Ok(text) = std::fs::read_to_string(dir.join(paths::AUTHORITY_PUB)) else {
        return Vec::new();
    };
    match chain(dir, &text) {
        Ok(c) => c.statements().iter().flat_map(|s| s.to_bytes()).collect(),
        Err(_) => Vec::new(),
    }
}

/// The host's own anchor: `DATA_DIR/authority.pub` and its rollovers.
pub fn host_anchor(dir: &Path) -> Result<TrustAnchor, HostError> {
    let path = dir.join(paths::AUTHORITY_PUB);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        HostError::Invalid(format!(
            "this host has no authority key ({}): activate it first",
            path.display()
        ))
    })?;
    anchor(dir, &text)
}

/// Verifies the statements in `text` from the root in `anchor_text` (and the chain kept in
/// `dir`) and keeps what verifies. Refused, with the reason, when nothing in `text` verifies:
/// "rollover statement is not signed by the root this client trusts" for a forged one.
pub fn import(dir: &Path, anchor_text: &str, text: &str) -> Result<Imported, HostError> {
    let statements =
        parse_file(text).map_err(|e| HostError::Invalid(format!("not a rollover file: {e}")))?;
    let mut chain = chain(dir, anchor_text)?;
    let (added, refused) = chain.accept_all(&statements);
    if let Some((_, first)) = refused.into_iter().next() {
        if added == 0 {
            return Err(HostError::Invalid(format!("refused: {first}")));
        }
        warn!(error = %first, "some rollover statements were refused");
    }
    let current_root_id = to_hex(&authority_id(chain.anchor().current()));
    if added > 0 {
        let path = dir.join(ROLLOVER_FILE);
        fsmode::write_atomic(&path, chain.to_text().as_bytes(), fsmode::PUBLIC_FILE)
            .map_err(HostError::write(&path))?;
        info!(added, root = %current_root_id, "root rollover accepted");
    }
    Ok(Imported {
        added,
        chain_length: chain.statements().len(),
        current_root_id,
    })
}

/// `tally host import-rollover FILE`: [`import`] against `DATA_DIR/authority.pub`.
pub fn import_file(dir: &Path, file: &Path) -> Result<Imported, HostError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| HostError::Invalid(format!("cannot read {}: {e}", file.display())))?;
    let path = dir.join(paths::AUTHORITY_PUB);
    let anchor_text = std::fs::read_to_string(&path).map_err(|_| {
        HostError::Invalid(format!(
            "this host trusts no authority yet ({} is missing): activate it first, or pass the \
             rollover file beside --trust",
            path.display()
        ))
    })?;
    import(dir, &anchor_text, &text)
}

/// Imports the rollover file beside `trust_file` (`x.pub` → `x.rollover`) if there is one,
/// verified from the root in `trust_file`.
pub fn import_beside(dir: &Path, trust_file: &Path) -> Result<Option<Imported>, HostError> {
    let beside = trust_file.with_extension("rollover");
    let Ok(text) = std::fs::read_to_string(&beside) else {
        return Ok(None);
    };
    let anchor_text = std::fs::read_to_string(trust_file)
        .map_err(|e| HostError::Invalid(format!("cannot read {}: {e}", trust_file.display())))?;
    import(dir, &anchor_text, &text).map(Some)
}
