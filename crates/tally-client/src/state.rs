//! The client's persistent state: `state.json` in the client's state directory.
//!
//! Every change goes through [`ClientState::update`]: take an exclusive lock on
//! `state.lock`, read, change, write a temporary file, fsync, rename. So the agent and any
//! `tally client` command never corrupt the state together, and a crash leaves either the old
//! or the new state, never a torn file.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tally_core::catalog::{Catalog, Edition};
use tally_core::hardware::Hardware;
use tally_core::keys::{KeyKind, ProductKey};
use tally_core::lifecycle::{AttemptOutcome, License, LicenseStatus, LifecycleError};
use tally_core::time::Timestamp;
use tally_core::trust::{TrustAnchor, armor, labels, parse_certificate};
use tally_core::trusted::{Evidence, TimeBase};
use tally_proto::HostCertificate;
use thiserror::Error;
use uuid::Uuid;

use crate::codes;
use crate::connect::Answer;
use crate::evidence::{EvidenceStore, SignedAnswer};
use crate::fsmode;

/// File name inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// Host certificates a state remembers at most (the oldest make room).
pub const MAX_CERTIFICATES: usize = 32;

/// Lock file name inside the state directory.
pub const LOCK_FILE: &str = "state.lock";

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
    #[error("client state file {path} is damaged ({source}); move it away to start afresh")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A key that this client cannot use.
    #[error("{0}")]
    Key(String),
    /// A lifecycle rule refused the operation.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
}

impl StateError {
    /// The stable result code of this error (see `docs/PROTOCOL.md`).
    pub fn code(&self) -> u32 {
        match self {
            Self::Lifecycle(LifecycleError::NoRearmLeft) => codes::NO_REARM_LEFT,
            Self::Lifecycle(_) | Self::Key(_) => codes::KEY_NOT_USABLE,
            Self::Io { .. } | Self::Corrupt { .. } => codes::STATE_UNAVAILABLE,
        }
    }
}

/// The outcome of the latest activation attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When.
    pub at: Timestamp,
    /// Which host answered or was tried.
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
    /// Random 128-bit client machine id, made at install time (and by generalize, R11).
    pub cmid: Uuid,
    /// When this installation was made.
    pub installed_at: Timestamp,
    /// The installed key, if any.
    pub key: Option<ProductKey>,
    /// The edition that key belongs to.
    pub sku: Option<Uuid>,
    /// Licensing status and timers (R7–R12).
    pub license: License,
    /// A host set by hand (R20): turns discovery off.
    pub manual_host: Option<String>,
    /// The host that answered last (R19); cleared when a host is set by hand (R20).
    pub cached_host: Option<String>,
    /// The latest attempt.
    pub last_attempt: Option<Attempt>,
    /// Host certificates verified before (armored), so later activations skip the fetch.
    #[serde(default)]
    pub host_certificates: Vec<String>,
    /// The authority a MAK client activates with (R25).
    #[serde(default)]
    pub authority_url: Option<String>,
    /// Set by generalize (R11): this copy is an image being prepared, so no agent activates it
    /// (which would register its new CMID) until the next agent start, i.e. the first start of
    /// each deployed copy. The agent clears it when it starts.
    #[serde(default)]
    pub generalized: bool,
    /// Local clock readings beside the signed evidence (X5).
    #[serde(default)]
    pub time: TimeBase,
    /// Hosts' signed answers: what grace and validity may claim (X5).
    #[serde(default)]
    pub evidence: EvidenceStore,
    /// The installation's request counter (X6): saved before each request is sent, so this
    /// installation never sends a number twice.
    #[serde(default)]
    pub sequence: u32,
    /// The hardware this CMID was made on (X6): found on other hardware, the state takes a new
    /// CMID (a copied state directory is a new installation).
    #[serde(default)]
    pub cmid_hardware: Option<Hardware>,
    /// When and why the CMID last changed by itself (X6), for status and logs.
    #[serde(default)]
    pub cmid_change: Option<CmidChange>,
    /// The newest revocation list verified (X7), armored; see `revoked.rs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocations: Option<String>,
}

/// A CMID the client replaced by itself (X6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmidChange {
    /// When (trusted time).
    pub at: Timestamp,
    /// The CMID it replaced.
    pub previous: Uuid,
    /// Why: `hardware_changed` (this state was copied to other hardware) or `clone_detected`
    /// (a host saw another installation present the CMID).
    pub reason: String,
}

/// The state as the time rules see it at one local reading (X5): the license bounded by the
/// signed evidence, trusted time, and whether the local clock was set back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// The license as the evidence allows it (an attempt is due at once while the clock is
    /// behind or nothing signed backs a license).
    pub license: License,
    /// Trusted time.
    pub now: Timestamp,
    /// The local clock is this far behind the latest reading seen (past the tolerance).
    pub clock_behind_ms: Option<i64>,
    /// X7: why the license was taken back (the MAK, or the host that activated it, is on the
    /// revocation list).
    pub revoked: Option<String>,
    /// X7: the serial of the revocation list held (0: none).
    pub revocation_serial: u32,
}

impl View {
    /// The status at trusted time: out of grace (notification) while the clock is behind.
    pub fn status(&self) -> LicenseStatus {
        if self.clock_behind_ms.is_some() && !self.license.permanent {
            return match self.license.status {
                LicenseStatus::Unlicensed => LicenseStatus::Unlicensed,
                _ => LicenseStatus::Notification,
            };
        }
        self.license.status_at(self.now)
    }

    /// Minutes left of grace or validity (0 while the clock is behind).
    pub fn minutes_left(&self) -> u32 {
        if self.clock_behind_ms.is_some() {
            return 0;
        }
        self.license.minutes_left(self.now)
    }
}

/// The signed time in a stored answer's response frame (the frame was verified when it was
/// stored; [`ClientState::view`] verifies it again whenever it is read).
fn signed_time(answer: Option<&SignedAnswer>) -> Option<Timestamp> {
    let frame = tally_core::hex::from_hex(&answer?.response)?;
    match tally_proto::Message::decode(&frame) {
        Ok(tally_proto::Message::ActivationResponse(r)) => Some(Timestamp(r.host_time)),
        _ => None,
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

impl ClientState {
    /// A fresh installation with a new random CMID.
    pub fn new(now: Timestamp) -> Self {
        Self {
            cmid: Uuid::new_v4(),
            installed_at: now,
            key: None,
            sku: None,
            license: License::default(),
            manual_host: None,
            cached_host: None,
            last_attempt: None,
            host_certificates: Vec::new(),
            authority_url: None,
            generalized: false,
            time: TimeBase::default(),
            evidence: EvidenceStore::default(),
            sequence: 0,
            cmid_hardware: None,
            cmid_change: None,
            revocations: None,
        }
    }

    /// The signed times in the evidence that verify against `anchor` (X5).
    pub fn evidence_times(&self, anchor: Option<&TrustAnchor>, catalog: &Catalog) -> Evidence {
        // X7: what a revoked host signed counts for nothing.
        let held = self.held_revocations(anchor);
        self.evidence.verify(
            anchor,
            &self.live_certificates(&held),
            self.cmid,
            self.sku,
            catalog,
        )
    }

    /// The state at local reading `local` as the time rules see it (X5; see [`View`]).
    pub fn view(
        &self,
        anchor: Option<&TrustAnchor>,
        catalog: &Catalog,
        local: Timestamp,
        tolerance_secs: u32,
    ) -> View {
        let evidence = self.evidence_times(anchor, catalog);
        let reading = self.time.read(&evidence, local, tolerance_secs);
        let mut license = evidence.bound(&self.license);
        if reading.behind_ms.is_some() && !license.permanent {
            // Until a host answers (or the clock is right again): an attempt is due now.
            license.next_attempt = None;
        }
        let held = self.held_revocations(anchor);
        if self.revoked_mak(&held).is_some() {
            // X7, R25: a revoked MAK's activation ends; an attempt is due (and refused).
            license.permanent = false;
            license.validity_end = None;
            license.next_attempt = None;
            if license.status == LicenseStatus::Licensed {
                license.status = LicenseStatus::Notification;
            }
        }
        View {
            license,
            now: reading.now,
            clock_behind_ms: reading.behind_ms,
            revoked: self.revoked_reason(&held),
            revocation_serial: held.serial(),
        }
    }

    /// X6: the CMID belongs to the hardware it was made on. On hardware past tolerance of
    /// that (R12 weights), this state was copied: it takes a new CMID, and a license activated
    /// elsewhere is out of tolerance here (R12). Returns whether the CMID changed. A state
    /// that never recorded its hardware adopts `current`.
    pub fn claim_hardware(&mut self, current: &Hardware, now: Timestamp) -> bool {
        match &self.cmid_hardware {
            None => {
                self.cmid_hardware = Some(current.clone());
                false
            }
            Some(born) if born.within_tolerance(current) => false,
            Some(_) => {
                self.new_cmid("hardware_changed", now);
                self.cmid_hardware = Some(current.clone());
                self.license.check_hardware(current, now);
                true
            }
        }
    }

    /// X6: takes a new CMID for `reason` (see [`CmidChange`]): this installation counts apart
    /// from the one whose CMID it had.
    pub fn new_cmid(&mut self, reason: &str, now: Timestamp) {
        let previous = self.cmid;
        self.cmid = Uuid::new_v4();
        self.cmid_change = Some(CmidChange {
            at: now,
            previous,
            reason: reason.to_owned(),
        });
        // Activation evidence named the old CMID; grace goes on.
        self.evidence.activation = None;
    }

    /// X6: reserves `n` request sequence numbers (saved before any is sent) and returns the
    /// first.
    pub fn reserve_sequence(&mut self, n: u32) -> u32 {
        let first = self.sequence.wrapping_add(1);
        self.sequence = self.sequence.wrapping_add(n);
        first
    }

    /// The lock only writers take. X4: it is made (and kept) mode 0600, so a user who cannot
    /// write the state cannot open it to hold `flock` on it and stall the owner; the directory
    /// is made 0755 with the agent's socket in it (R13), never from the umask.
    fn open_lock(dir: &Path) -> Result<fs::File, StateError> {
        fsmode::create_dir(dir, fsmode::SHARED_DIR).map_err(io(dir))?;
        let path = dir.join(LOCK_FILE);
        fsmode::open_file(&path, fsmode::PRIVATE_FILE).map_err(io(&path))
    }

    fn read_unlocked(dir: &Path, now: Timestamp) -> Result<Self, StateError> {
        let path = dir.join(STATE_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::new(now)),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    fn write_unlocked(&self, dir: &Path) -> Result<(), StateError> {
        let path = dir.join(STATE_FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        // The state holds the product key: readable by its owner only (X4), also when an older
        // Tally left a world-readable file (the temporary file is new each time, so the mode
        // applies on every save).
        fsmode::write_atomic(&path, &json, fsmode::PRIVATE_FILE).map_err(io(&path))
    }

    /// Reads the state in `dir` (a fresh, unsaved state if there is none). Readers take no
    /// lock: every save is an atomic rename, so a reader sees the old or the new file whole,
    /// never waits for a writer and never holds one up (X4); nor does it create anything.
    pub fn load(dir: &Path, now: Timestamp) -> Result<Self, StateError> {
        Self::read_unlocked(dir, now)
    }

    /// Reads, changes and saves the state in `dir` under an exclusive lock. `f`'s error aborts
    /// without saving, except where `f` wants the change kept regardless (return `Ok` then).
    pub fn update<R, E>(
        dir: &Path,
        now: Timestamp,
        f: impl FnOnce(&mut Self) -> Result<R, E>,
    ) -> Result<R, E>
    where
        E: From<StateError>,
    {
        let lock = Self::open_lock(dir)?;
        lock.lock().map_err(io(dir)).map_err(E::from)?;
        let mut state = Self::read_unlocked(dir, now)?;
        let out = f(&mut state)?;
        // X5: the highest local reading only rises; statuses are computed from trusted time
        // when read (`view`), not refreshed here on the raw clock.
        state.time.observe(now);
        state.write_unlocked(dir)?;
        drop(lock);
        Ok(out)
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
                "this is a {} key; clients install an edition's setup key (see `tally catalog list`)",
                key.kind()
            )));
        }
        let edition = catalog.edition_by_setup_key(key).ok_or_else(|| {
            StateError::Key(
                "no edition in the catalog has this setup key (see `tally catalog list`)".into(),
            )
        })?;
        // A new edition, or a MAK client going back to host activation (R25), starts afresh.
        if self.sku != Some(edition.sku) || self.is_mak() {
            let rearms = self.license.rearms_left;
            self.license = License {
                rearms_left: rearms,
                ..License::default()
            };
        }
        self.key = Some(key);
        self.sku = Some(edition.sku);
        if self.license.status == LicenseStatus::Unlicensed {
            // A new grace period: the next signed answer bounds it (X5).
            self.evidence.grace = None;
        }
        self.license.install(now);
        Ok(edition)
    }

    /// Whether a MAK is installed (R25).
    pub fn is_mak(&self) -> bool {
        self.key.is_some_and(|k| k.kind() == KeyKind::Mak)
    }

    /// R25: installs a MAK: the client activates directly with the authority from now on. The
    /// edition stays the one its setup key named.
    pub fn install_mak(&mut self, key: ProductKey, now: Timestamp) -> Result<(), StateError> {
        if self.sku.is_none() {
            return Err(StateError::Key(
                "install the edition's setup key first (it names the edition), then the MAK".into(),
            ));
        }
        if !self.is_mak() {
            let rearms = self.license.rearms_left;
            self.license = License {
                rearms_left: rearms,
                ..License::default()
            };
            self.license.install(now);
        }
        self.key = Some(key);
        self.cached_host = None;
        Ok(())
    }

    /// Removes the key: the installation is unlicensed.
    pub fn uninstall_key(&mut self) {
        self.key = None;
        self.sku = None;
        self.license.uninstall();
    }

    /// The installed edition.
    pub fn edition<'c>(&self, catalog: &'c Catalog) -> Option<&'c Edition> {
        self.sku.and_then(|sku| catalog.edition(sku))
    }

    /// The status at `now`.
    pub fn status(&self, now: Timestamp) -> LicenseStatus {
        self.license.status_at(now)
    }

    /// Applies a verified answer (R2, R7, R9, R12) that arrived at local reading `local`: it
    /// is kept as evidence and re-bases trusted time on the host's signed time (X5), at which
    /// the lifecycle runs; stored times beyond what the evidence allows are pulled back.
    pub fn apply_answer(&mut self, answer: &Answer, hardware: Option<&Hardware>, local: Timestamp) {
        let now = answer.host_time;
        let signed = SignedAnswer::new(&answer.request_frame, &answer.response_frame);
        self.evidence.latest = Some(signed.clone());
        if self.evidence.grace.is_none() {
            self.evidence.grace = Some(signed.clone());
        }
        if answer.activated {
            self.evidence.activation = Some(signed);
        }
        self.time.on_signed(local);
        let (result, code) = if !answer.result.is_success() {
            (
                answer.result.name().unwrap_or("host_error").to_owned(),
                answer.result.0,
            )
        } else if answer.activated {
            ("activated".to_owned(), 0)
        } else {
            ("below_threshold".to_owned(), codes::BELOW_THRESHOLD)
        };
        let outcome = if answer.result.is_success() {
            AttemptOutcome::Counted {
                activated: answer.activated,
                intervals: answer.intervals,
            }
        } else {
            AttemptOutcome::Failed
        };
        self.license.on_attempt(now, outcome, hardware);
        // X5: the answer was verified by the connector just now; bound what the state claims by
        // it (an install made with the clock ahead gets its grace from the host's time).
        let evidence = Evidence {
            latest: Some(now),
            activation: signed_time(self.evidence.activation.as_ref()),
            grace: signed_time(self.evidence.grace.as_ref()),
        };
        self.license = evidence.bound(&self.license);
        // R19: remember the host that answered; R20: not while a host is set by hand.
        if self.manual_host.is_none() {
            self.cached_host = Some(answer.host.to_string());
        }
        self.last_attempt = Some(Attempt {
            at: now,
            host: Some(answer.host.to_string()),
            result,
            code,
            count: Some(answer.count),
        });
    }

    /// Records a failed attempt (R8: retry after the activation interval).
    pub fn record_failure(&mut self, host: Option<String>, name: &str, code: u32, now: Timestamp) {
        self.license.on_attempt(now, AttemptOutcome::Failed, None);
        self.last_attempt = Some(Attempt {
            at: now,
            host,
            result: name.to_owned(),
            code,
            count: None,
        });
    }

    /// R11: rearm.
    pub fn rearm(&mut self, now: Timestamp) -> Result<(), StateError> {
        self.license.rearm(now)?;
        self.evidence.grace = None;
        Ok(())
    }

    /// R11: generalize: always a new CMID; the grace timer is reset when a rearm is left,
    /// otherwise it is left unchanged and the error is returned (the state is still changed:
    /// save it).
    pub fn generalize(&mut self, now: Timestamp) -> Result<(), StateError> {
        self.cmid = Uuid::new_v4();
        self.cached_host = None;
        self.last_attempt = None;
        self.generalized = true;
        self.evidence.activation = None;
        let result = self.license.generalize(now);
        if result.is_ok() {
            self.evidence.grace = None;
        }
        Ok(result?)
    }

    /// R20: sets a host by hand; discovery is off and the cached host is cleared.
    pub fn set_manual_host(&mut self, host: String) {
        self.manual_host = Some(host);
        self.cached_host = None;
    }

    /// R20: clears the manual host; discovery is on again.
    pub fn clear_manual_host(&mut self) {
        self.manual_host = None;
    }

    /// The host to try: the manual one (R20), else the cached one (R19).
    pub fn host(&self) -> Option<&str> {
        self.manual_host.as_deref().or(self.cached_host.as_deref())
    }

    /// Remembered host certificates that still parse.
    pub fn certificates(&self) -> Vec<HostCertificate> {
        self.host_certificates
            .iter()
            .filter_map(|t| parse_certificate(t).ok())
            .collect()
    }

    /// Adds `certs` to the remembered certificates (those kept stay: the evidence (X5) is
    /// verified through them), keeping at most the newest [`MAX_CERTIFICATES`].
    pub fn set_certificates(&mut self, certs: &[HostCertificate]) {
        for c in certs {
            let text = armor(labels::HOST_CERTIFICATE, &c.to_bytes())
                .trim()
                .to_owned();
            if !self.host_certificates.contains(&text) {
                self.host_certificates.push(text);
            }
        }
        let excess = self
            .host_certificates
            .len()
            .saturating_sub(MAX_CERTIFICATES);
        self.host_certificates.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = Catalog::demo();
        let now = Timestamp(1_800_000_000_000);
        let key = catalog.editions()[2].setup_key;
        let saved = ClientState::update(dir.path(), now, |s| -> Result<_, StateError> {
            s.install_setup_key(key, &catalog, now)?;
            Ok(s.clone())
        })
        .expect("install");
        let back = ClientState::load(dir.path(), now).expect("load");
        assert_eq!(back.cmid, saved.cmid);
        assert_eq!(back.status(now), LicenseStatus::InitialGrace);
        assert_eq!(back.license.minutes_left(now), 30 * 24 * 60);
    }

    #[test]
    fn non_setup_keys_are_refused() {
        let mut s = ClientState::new(Timestamp(0));
        let err = s
            .install_setup_key(ProductKey::mak(1, 2), &Catalog::demo(), Timestamp(0))
            .expect_err("mak");
        assert!(err.to_string().contains("setup key"), "{err}");
    }

    // R20: a manual host clears the cached one; clearing it turns discovery back on.
    #[test]
    fn r20_manual_host_clears_cache() {
        let mut s = ClientState::new(Timestamp(0));
        s.cached_host = Some("10.0.0.1:1688".into());
        s.set_manual_host("kms.example.test:1688".into());
        assert_eq!(s.host(), Some("kms.example.test:1688"));
        assert_eq!(s.cached_host, None);
        s.clear_manual_host();
        assert_eq!(s.host(), None);
    }

    // Concurrent updates from many threads never lose a write or tear the file.
    #[test]
    fn concurrent_updates_are_serialised_by_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = Timestamp(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..25 {
                        ClientState::update(dir.path(), now, |s| -> Result<(), StateError> {
                            s.host_certificates.push("x".into());
                            Ok(())
                        })
                        .expect("update");
                    }
                });
            }
        });
        assert_eq!(
            ClientState::load(dir.path(), now)
                .expect("load")
                .host_certificates
                .len(),
            200
        );
    }

    // R11: generalize always makes a new CMID, even with no rearm left.
    #[test]
    fn r11_generalize_makes_a_new_cmid() {
        let catalog = Catalog::demo();
        let mut s = ClientState::new(Timestamp(0));
        s.install_setup_key(catalog.editions()[0].setup_key, &catalog, Timestamp(0))
            .expect("key");
        let before = s.cmid;
        s.generalize(Timestamp(1)).expect("rearm left");
        assert_ne!(s.cmid, before);
        s.license.rearms_left = 0;
        let grace = s.license.grace_end;
        let cmid = s.cmid;
        assert!(s.generalize(Timestamp(2)).is_err());
        assert_ne!(s.cmid, cmid);
        assert_eq!(s.license.grace_end, grace);
    }
}
