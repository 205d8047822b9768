//! Root rollover on the client (X8): the statements that hand trust from the root in
//! `authority.pub` to newer roots, kept as `STATE_DIR/authority.rollover`.
//!
//! A client reads statements from a file beside its trust file (`authority.pub` →
//! `authority.rollover`, as the vendor's software update installs them), from `tally client
//! import-rollover FILE`, or from any caller of [`import`] (the wire delivery through hosts).
//! Each is verified from the root the client trusts ([`tally_core::rollover::Chain`]); what
//! verifies is kept in the state directory, so it stays trusted whatever file it came from.

use std::path::{Path, PathBuf};

use tally_core::rollover::{Chain, RolloverError, parse_file};
use tally_core::trust::{TrustAnchor, authority_id, to_hex};
use thiserror::Error;

use crate::fsmode;

/// File name of the accepted rollover statements in the state directory (and beside a trust
/// file).
pub const ROLLOVER_FILE: &str = "authority.rollover";

/// Why statements were not imported.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RolloverImportError {
    /// The file is not a rollover file, or no statement in it verifies.
    #[error("{0}")]
    Refused(#[from] RolloverError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// What an import did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Imported {
    /// Statements newly accepted.
    pub added: usize,
    /// Statements in the chain now.
    pub chain_length: usize,
    /// The id of the newest trusted root, hex.
    pub current_root_id: String,
    /// The file the chain is kept in.
    pub file: PathBuf,
}

/// The rollover file beside a trust file (`x/authority.pub` → `x/authority.rollover`).
pub fn beside(trust_file: &Path) -> PathBuf {
    trust_file.with_extension("rollover")
}

/// The chain kept in `dir`, verified from `root`'s key. Statements that do not verify (a file
/// written for another root) are left out.
pub fn chain(dir: &Path, root: &TrustAnchor) -> Chain {
    let mut chain = Chain::new(*root.key());
    let path = dir.join(ROLLOVER_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        match parse_file(&text) {
            Ok(statements) => {
                let (_, refused) = chain.accept_all(&statements);
                for (_, error) in refused {
                    tracing::warn!(path = %path.display(), %error, "rollover statement ignored");
                }
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "rollover file ignored");
            }
        }
    }
    chain
}

/// `root` extended by the chain kept in `dir`.
pub fn anchor(dir: &Path, root: &TrustAnchor) -> TrustAnchor {
    chain(dir, root).into_anchor()
}

/// Verifies the statements in `text` from `root` (and the chain already kept in `dir`) and
/// keeps those that verify. Refused when the text holds no statement that verifies or is
/// already known, with the reason of the first refusal (a forged statement: "rollover
/// statement is not signed by the root this client trusts").
pub fn import(dir: &Path, root: &TrustAnchor, text: &str) -> Result<Imported, RolloverImportError> {
    let statements = parse_file(text)?;
    let mut chain = chain(dir, root);
    let (added, refused) = chain.accept_all(&statements);
    if let Some((_, first)) = refused.into_iter().next() {
        if added == 0 {
            return Err(first.into());
        }
        tracing::warn!(error = %first, "some rollover statements were refused");
    }
    let file = dir.join(ROLLOVER_FILE);
    if added > 0 {
        fsmode::write_atomic(&file, chain.to_text().as_bytes(), fsmode::PUBLIC_FILE).map_err(
            |source| RolloverImportError::Io {
                path: file.clone(),
                source,
            },
        )?;
        tracing::info!(
            added,
            root = %to_hex(&authority_id(chain.anchor().current())),
            "root rollover accepted"
        );
    }
    Ok(Imported {
        added,
        chain_length: chain.statements().len(),
        current_root_id: to_hex(&authority_id(chain.anchor().current())),
        file,
    })
}

/// Imports the statements beside `trust_file`, if that file exists.
pub fn import_beside(
    dir: &Path,
    root: &TrustAnchor,
    trust_file: &Path,
) -> Result<Option<Imported>, RolloverImportError> {
    let path = beside(trust_file);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(RolloverImportError::Io { path, source }),
    };
    import(dir, root, &text).map(Some)
}

/// [`import_beside`], logging a refusal instead of returning it: a damaged or forged file
/// beside the trust file must not stop the client from using the root it trusts.
pub fn keep_beside(dir: &Path, root: &TrustAnchor, trust_file: &Path) {
    if let Err(error) = import_beside(dir, root, trust_file) {
        tracing::warn!(
            %error,
            file = %beside(trust_file).display(),
            "rollover file beside the trust file refused"
        );
    }
}
