//! The client's persistent state: `state.json` in the client's state directory.
//!
//! Written atomically (temporary file, fsync, rename), so a crash leaves either the old or the
//! new state, never a torn file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tally_core::catalog::{Catalog, Edition};
use tally_core::host::Intervals;
use tally_core::keys::{KeyKind, ProductKey};
use tally_core::time::Timestamp;
use tally_core::trust::{armor, labels, parse_certificate};
use tally_proto::{HostCertificate, LicenseState};
use thiserror::Error;
use uuid::Uuid;

use crate::connect::Answer;

/// File name inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// R10: initial grace period.
pub const GRACE_DAYS: i64 = 30;
/// R7: validity after a successful activation or renewal.
pub const VALIDITY_DAYS: i64 = 180;

/// Why the state could not be read, written or changed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StateError {
    /// File system error.
    #[error("client state in {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid state.
    #[error("client state file {path} is damaged: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A key that this client cannot use.
    #[error("{0}")]
    Key(String),
}

/// The client's licensing status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LicenseStatus {
    /// No key installed.
    Unlicensed,
    /// Working unactivated within grace (R10).
    InitialGrace,
    /// Activated (R2) and within validity (R7).
    Licensed,
    /// Grace or validity ran out (R10).
    Notification,
}

impl std::fmt::Display for LicenseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unlicensed => "unlicensed",
            Self::InitialGrace => "initial grace",
            Self::Licensed => "licensed",
            Self::Notification => "notification",
        })
    }
}

impl LicenseStatus {
    /// The wire form sent to hosts.
    pub fn wire(self) -> LicenseState {
        match self {
            Self::Unlicensed => LicenseState::Unlicensed,
            Self::InitialGrace => LicenseState::InitialGrace,
            Self::Licensed => LicenseState::Licensed,
            Self::Notification => LicenseState::Notification,
        }
    }
}

/// The outcome of the latest activation attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When.
    pub at: Timestamp,
    /// Which host (address) answered, if any.
    pub host: Option<String>,
    /// `activated`, `below_threshold`, or an error code name.
    pub result: String,
    /// The numeric result code.
    pub code: u32,
    /// The count given, if any.
    pub count: Option<u32>,
}

/// Everything a client keeps between runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientState {
    /// Random 128-bit client machine id, made at install time.
    pub cmid: Uuid,
    /// When this installation was made.
    pub installed_at: Timestamp,
    /// The installed key, if any.
    pub key: Option<ProductKey>,
    /// The edition that key belongs to.
    pub sku: Option<Uuid>,
    /// Current status.
    pub status: LicenseStatus,
    /// End of the grace period (R10).
    pub grace_end: Option<Timestamp>,
    /// End of validity (R7).
    pub validity_end: Option<Timestamp>,
    /// Intervals last sent by a host (R9).
    pub intervals: Option<(u32, u32)>,
    /// The latest attempt.
    pub last_attempt: Option<Attempt>,
    /// Host certificates verified before (armored), so later activations skip the fetch.
    #[serde(default)]
    pub host_certificates: Vec<String>,
}

impl ClientState {
    /// A fresh installation with a new random CMID.
    pub fn new(now: Timestamp) -> Self {
        Self {
            cmid: Uuid::new_v4(),
            installed_at: now,
            key: None,
            sku: None,
            status: LicenseStatus::Unlicensed,
            grace_end: None,
            validity_end: None,
            intervals: None,
            last_attempt: None,
            host_certificates: Vec::new(),
        }
    }

    fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Loads the state in `dir`, or makes a fresh one (not yet saved) if there is none.
    pub fn load_or_new(dir: &Path, now: Timestamp) -> Result<Self, StateError> {
        let path = Self::path(dir);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::new(now)),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Saves atomically into `dir` (created if missing).
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = Self::path(dir);
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let mut f = fs::File::create(&tmp).map_err(io)?;
        f.write_all(&json).map_err(io)?;
        f.sync_all().map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }

    /// Installs a setup key: the installation becomes a host-activated client of that edition
    /// in initial grace (R10).
    pub fn install_setup_key<'c>(
        &mut self,
        key: ProductKey,
        catalog: &'c Catalog,
        now: Timestamp,
    ) -> Result<&'c Edition, StateError> {
        if key.kind() != KeyKind::Setup {
            return Err(StateError::Key(format!(
                "this is a {} key; clients install an edition's setup key",
                key.kind()
            )));
        }
        let edition = catalog.edition_by_setup_key(key).ok_or_else(|| {
            StateError::Key(
                "no edition in the catalog has this setup key (see `tally catalog list`)".into(),
            )
        })?;
        if self.sku != Some(edition.sku) {
            self.validity_end = None;
            self.status = LicenseStatus::InitialGrace;
            self.grace_end = Some(now.plus_days(GRACE_DAYS));
        }
        self.key = Some(key);
        self.sku = Some(edition.sku);
        Ok(edition)
    }

    /// The installed edition.
    pub fn edition<'c>(&self, catalog: &'c Catalog) -> Option<&'c Edition> {
        self.sku.and_then(|sku| catalog.edition(sku))
    }

    /// Minutes left in the current grace or validity period.
    pub fn minutes_left(&self, now: Timestamp) -> u32 {
        let end = match self.status {
            LicenseStatus::Licensed => self.validity_end,
            _ => self.grace_end,
        };
        end.map_or(0, |e| {
            ((e.0 - now.0).max(0) / 60_000).min(i64::from(u32::MAX)) as u32
        })
    }

    /// Applies a verified answer (R2, R7, R9).
    pub fn apply_answer(&mut self, answer: &Answer, now: Timestamp) {
        self.intervals = Some((answer.intervals.activation, answer.intervals.renewal));
        let result = if !answer.result.is_success() {
            answer.result.name().unwrap_or("host_error").to_owned()
        } else if answer.activated {
            self.status = LicenseStatus::Licensed;
            self.validity_end = Some(now.plus_days(VALIDITY_DAYS));
            "activated".to_owned()
        } else {
            "below_threshold".to_owned()
        };
        let code = if answer.result.is_success() && !answer.activated {
            BELOW_THRESHOLD_CODE
        } else {
            answer.result.0
        };
        self.last_attempt = Some(Attempt {
            at: now,
            host: Some(answer.host.to_string()),
            result,
            code,
            count: Some(answer.count),
        });
    }

    /// Records a failed attempt.
    pub fn record_failure(&mut self, host: Option<String>, name: &str, code: u32, now: Timestamp) {
        self.last_attempt = Some(Attempt {
            at: now,
            host,
            result: name.to_owned(),
            code,
            count: None,
        });
    }

    /// The intervals in force (R9), host's if any, else the defaults.
    pub fn intervals(&self) -> Intervals {
        self.intervals
            .map_or_else(Intervals::default, |(activation, renewal)| Intervals {
                activation,
                renewal,
            })
    }

    /// Remembered host certificates that still parse.
    pub fn certificates(&self) -> Vec<HostCertificate> {
        self.host_certificates
            .iter()
            .filter_map(|t| parse_certificate(t).ok())
            .collect()
    }

    /// Replaces the remembered certificates.
    pub fn set_certificates(&mut self, certs: &[HostCertificate]) {
        self.host_certificates = certs
            .iter()
            .map(|c| {
                armor(labels::HOST_CERTIFICATE, &c.to_bytes())
                    .trim()
                    .to_owned()
            })
            .collect();
    }
}

/// Result code for "count below threshold": the client stays in grace and retries (R2).
pub const BELOW_THRESHOLD_CODE: u32 = 0x47A1_0001;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = Catalog::demo();
        let now = Timestamp(1_800_000_000_000);
        let mut s = ClientState::load_or_new(dir.path(), now).expect("fresh");
        let key = catalog.editions()[2].setup_key;
        s.install_setup_key(key, &catalog, now).expect("setup key");
        s.save(dir.path()).expect("save");
        let back = ClientState::load_or_new(dir.path(), now).expect("load");
        assert_eq!(back, s);
        assert_eq!(back.status, LicenseStatus::InitialGrace);
        assert_eq!(back.minutes_left(now), 30 * 24 * 60);
    }

    #[test]
    fn non_setup_keys_are_refused() {
        let mut s = ClientState::new(Timestamp(0));
        let err = s
            .install_setup_key(ProductKey::mak(1, 2), &Catalog::demo(), Timestamp(0))
            .expect_err("mak");
        assert!(err.to_string().contains("setup key"), "{err}");
    }
}
