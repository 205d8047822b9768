//! Revocation lists that reach a client outside a host's answer (X7): a file the vendor's
//! software update puts beside the catalog, or `tally client import-revocations FILE`.

use std::path::{Path, PathBuf};

use tally_core::revocation::{Offer, VerifiedList};
use tally_core::time::Timestamp;

use super::Client;
use crate::codes;
use crate::state::{ClientState, StateError};

/// What an import did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Imported {
    /// The serial held now.
    pub serial: u32,
    /// Whether the offered list replaced the one held.
    pub replaced: bool,
}

/// Why a list was not imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// No trusted authority key to verify it with.
    #[error("no trusted authority key: install one with `tally client trust FILE` first")]
    NoTrust,
    /// The list does not verify or is older than the one held.
    #[error("revocation list refused: {0}")]
    Refused(#[from] tally_core::revocation::RevocationError),
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state cannot be written.
    #[error(transparent)]
    State(#[from] StateError),
}

impl ImportError {
    /// The result code (R14).
    pub fn code(&self) -> u32 {
        match self {
            Self::NoTrust => codes::NO_TRUST,
            Self::Refused(_) => codes::UNTRUSTED_RESPONSE,
            Self::Read { .. } => codes::KEY_NOT_USABLE,
            Self::State(e) => e.code(),
        }
    }
}

impl Client {
    /// Reads revocation lists from `path` too: the vendor's update puts the newest signed
    /// list there (the CLI uses `revocations.tally` beside `--catalog FILE`). Offered before
    /// every activation and status; an older or broken file is ignored (logged).
    pub fn with_update_file(mut self, path: PathBuf) -> Self {
        self.update_file = Some(path);
        self
    }

    /// Imports the armored list `text` (X7): kept if it verifies under the trusted authority
    /// and is newer than the one held; an older list is an error and changes nothing.
    pub fn import_revocations(&self, text: &str, now: Timestamp) -> Result<Imported, ImportError> {
        let anchor = self.anchor().ok_or(ImportError::NoTrust)?;
        let list = VerifiedList::from_file_text(text, &anchor)?;
        let replaced = ClientState::update(&self.dir, now, |s| -> Result<_, ImportError> {
            Ok(s.offer_revocations(&anchor, list)? == Offer::Newer)
        })?;
        let serial = ClientState::load(&self.dir, now)?
            .held_revocations(Some(&anchor))
            .serial();
        Ok(Imported { serial, replaced })
    }

    /// Imports the file `path` ([`Client::import_revocations`]).
    pub fn import_revocations_file(
        &self,
        path: &Path,
        now: Timestamp,
    ) -> Result<Imported, ImportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.import_revocations(&text, now)
    }

    /// Offers the update file, if one is set and newer than what is held; a failure is
    /// logged, never fatal.
    pub(super) fn offer_update_file(&self, now: Timestamp) {
        let Some(path) = &self.update_file else {
            return;
        };
        if !path.exists() {
            return;
        }
        match self.import_revocations_file(path, now) {
            Ok(done) if done.replaced => {
                tracing::info!(path = %path.display(), serial = done.serial, "revocation list from the update loaded (X7)");
            }
            Ok(_) => {}
            Err(ImportError::Refused(tally_core::revocation::RevocationError::Older {
                ..
            })) => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "revocation list beside the catalog ignored");
            }
        }
    }
}
