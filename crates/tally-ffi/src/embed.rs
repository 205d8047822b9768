//! The safe, blocking API that the C ABI ([`crate::capi`]) and the Python package wrap.
//!
//! A [`Handle`] owns a small Tokio runtime (one worker thread) and blocks the calling thread on
//! it, so no async runtime leaks into the caller. Every method takes `&self` and may be called
//! from several threads at once: the state file is locked per operation
//! ([`tally_client::ClientState::update`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tally_client::agent::{Licensing, machine_name};
use tally_client::codes;
use tally_client::ops::{Client, OpResult};
use tally_client::{LicenseStatus, StatusReport};
use tally_core::catalog::Catalog;
use tally_core::time::{Clock, SystemClock};
use tally_core::trust::parse_authority_public;
use thiserror::Error;

/// A failed call: a result code (docs/PROTOCOL.md "Result codes") and a sentence for people.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{message} (0x{code:08X} {name})", name = codes::name(*code))]
pub struct Error {
    /// The result code, never 0 and never `BELOW_THRESHOLD`.
    pub code: u32,
    /// What happened, for people (never contains a key).
    pub message: String,
}

impl Error {
    /// An error with `code` and `message`.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn from_op(op: OpResult) -> Self {
        Self::new(op.code, op.message)
    }
}

/// The outcome of an activation that reached a host: activated, or counted below the threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activation {
    /// Whether the installation is activated (count ≥ the edition's threshold, R2), or, for a
    /// MAK, activated by the authority.
    pub activated: bool,
    /// `0` when activated, `BELOW_THRESHOLD` (`0x47A10001`) when not yet.
    pub code: u32,
    /// The pool's count the host reported (0 for a MAK activation).
    pub count: u32,
    /// The edition's threshold (0 when unknown, e.g. a MAK activation).
    pub threshold: u16,
    /// A sentence for people.
    pub message: String,
}

/// The license status, as a vendor's application shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Whether the application may consider itself licensed.
    pub licensed: bool,
    /// Licensed for good by a MAK (R25): `days_left` means nothing then.
    pub permanent: bool,
    /// The state: unlicensed, grace, licensed, notification, out of tolerance.
    pub state: LicenseStatus,
    /// Whole days left of grace or validity.
    pub days_left: u32,
    /// Minutes left of grace or validity.
    pub minutes_left: u32,
    /// The installed edition's name.
    pub edition: Option<String>,
    /// The count of the last activation attempt that reached a host.
    pub count: Option<u32>,
    /// The result code of the last activation attempt.
    pub last_result: Option<u32>,
    /// Rearms left (R11).
    pub rearms_left: u8,
    /// The full report (also has RFC 3339 times), as `tally client status --json` prints it.
    pub report: StatusReport,
}

impl From<StatusReport> for Status {
    fn from(r: StatusReport) -> Self {
        Self {
            licensed: r.licensed,
            permanent: r.permanent,
            state: r.status,
            days_left: r.days_left,
            minutes_left: r.minutes_left,
            edition: r.edition.clone(),
            count: r.last_attempt.as_ref().and_then(|a| a.count),
            last_result: r.last_attempt.as_ref().map(|a| a.code),
            rearms_left: r.rearms_left,
            report: r,
        }
    }
}

/// An installation's licensing, opened on its state directory.
#[derive(Debug)]
pub struct Handle {
    runtime: tokio::runtime::Runtime,
    dir: PathBuf,
    catalog: Arc<Catalog>,
    licensing: Licensing,
    client: Client,
}

impl Handle {
    /// Opens the installation whose state is in `state_dir` (created on first change) with the
    /// vendor's catalog file, or the built-in demo catalog when `catalog_file` is `None`.
    pub fn open(state_dir: &Path, catalog_file: Option<&Path>) -> Result<Self, Error> {
        let catalog = match catalog_file {
            None => Catalog::demo(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::new(
                        codes::STATE_UNAVAILABLE,
                        format!("cannot read the catalog {}: {e}", path.display()),
                    )
                })?;
                Catalog::parse(&text).map_err(|e| {
                    Error::new(
                        codes::KEY_NOT_USABLE,
                        format!("the catalog {} is not valid: {e}", path.display()),
                    )
                })?
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tally-runtime")
            .enable_all()
            .build()
            .map_err(|e| {
                Error::new(
                    codes::INTERNAL_ERROR,
                    format!("cannot start the runtime: {e}"),
                )
            })?;
        let catalog = Arc::new(catalog);
        Ok(Self {
            runtime,
            dir: state_dir.to_owned(),
            licensing: Licensing::with_catalog(state_dir, Arc::clone(&catalog)),
            client: Client::new(state_dir, Arc::clone(&catalog), None),
            catalog,
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Installs a setup key (host-activated client) or a MAK (R25). A host key is refused
    /// (`KEY_NOT_USABLE`): it belongs on a host (R22).
    pub fn install_key(&self, key: &str) -> Result<String, Error> {
        let op = self.client.install_key(key, false, SystemClock.now());
        if op.ok {
            Ok(op.message)
        } else {
            Err(Error::from_op(op))
        }
    }

    /// Activates now. With neither `host` nor `trust`, through the agent when one runs (any
    /// user may ask it, R13), else directly at the manual or cached host or by DNS discovery
    /// (R19, R20). `host` (`HOST[:PORT]`, default port 1688) is used for this attempt only;
    /// `trust` is an authority public key file that overrides `STATE_DIR/authority.pub`.
    ///
    /// Below the threshold is not an error: it returns `activated == false` with
    /// `BELOW_THRESHOLD`. Every other failure is an [`Error`].
    pub fn activate(&self, host: Option<&str>, trust: Option<&Path>) -> Result<Activation, Error> {
        let op = match (host, trust) {
            (None, None) => self
                .runtime
                .block_on(self.licensing.activate())
                .map_err(|e| Error::new(codes::STATE_UNAVAILABLE, e.to_string()))?,
            (host, trust) => {
                let anchor = match trust {
                    None => None,
                    Some(path) => {
                        let root = read_trust(path)?;
                        // X8: the rollover file beside the trust file is verified and kept.
                        tally_client::rollover::keep_beside(&self.dir, &root, path);
                        Some(root)
                    }
                };
                let client = match anchor {
                    Some(a) => Client::new(&self.dir, Arc::clone(&self.catalog), Some(a)),
                    None => self.client.clone(),
                };
                self.runtime
                    .block_on(client.activate(host, &machine_name(), SystemClock.now()))
            }
        };
        if op.ok || op.code == codes::BELOW_THRESHOLD {
            Ok(Activation {
                activated: op.ok,
                code: op.code,
                count: op.count.unwrap_or(0),
                threshold: op.threshold.unwrap_or(0),
                message: op.message,
            })
        } else {
            Err(Error::from_op(op))
        }
    }

    /// The license status: from the agent when it runs, else read from the state directory.
    pub fn status(&self) -> Result<Status, Error> {
        self.runtime
            .block_on(self.licensing.status())
            .map(Status::from)
            .map_err(|e| {
                let code = match &e {
                    tally_client::agent::AgentError::State(s) => s.code(),
                    _ => codes::STATE_UNAVAILABLE,
                };
                Error::new(code, e.to_string())
            })
    }

    /// R11: grace back to 30 days, at most 3 times (`NO_REARM_LEFT` after that).
    pub fn rearm(&self) -> Result<String, Error> {
        let op = self.client.rearm(SystemClock.now());
        if op.ok {
            Ok(op.message)
        } else {
            Err(Error::from_op(op))
        }
    }
}

fn read_trust(path: &Path) -> Result<tally_core::trust::TrustAnchor, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::new(
            codes::NO_TRUST,
            format!("cannot read the trust file {}: {e}", path.display()),
        )
    })?;
    parse_authority_public(&text).map_err(|e| {
        Error::new(
            codes::NO_TRUST,
            format!(
                "{} is not an authority public key file: {e}",
                path.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_fresh_directory_is_unlicensed_and_a_bad_key_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let h = Handle::open(dir.path(), None).unwrap();
        let s = h.status().unwrap();
        assert!(!s.licensed);
        assert_eq!(s.state, LicenseStatus::Unlicensed);
        let e = h.install_key("BCDFG-BCDFG-BCDFG-BCDFG-BCDFG").unwrap_err();
        assert_eq!(e.code, codes::KEY_NOT_USABLE);
        assert!(!e.message.contains("BCDFG-BCDFG"), "{e}");
    }

    #[test]
    fn a_setup_key_starts_grace_and_activation_without_trust_says_no_trust() {
        let dir = tempfile::tempdir().unwrap();
        let h = Handle::open(dir.path(), None).unwrap();
        h.install_key("FW777-M677J-W8KJV-QG4VJ-HC6WP").unwrap();
        let s = h.status().unwrap();
        assert_eq!(s.state, LicenseStatus::InitialGrace);
        assert!((29..=30).contains(&s.days_left), "{}", s.days_left);
        assert!(s.edition.is_some());
        let e = h.activate(Some("127.0.0.1:9"), None).unwrap_err();
        assert_eq!(e.code, codes::NO_TRUST);
        let e = h
            .activate(Some("127.0.0.1:9"), Some(&dir.path().join("missing.pub")))
            .unwrap_err();
        assert_eq!(e.code, codes::NO_TRUST);
    }

    #[test]
    fn a_missing_catalog_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let e = Handle::open(dir.path(), Some(&dir.path().join("none.toml"))).unwrap_err();
        assert_eq!(e.code, codes::STATE_UNAVAILABLE);
    }
}
