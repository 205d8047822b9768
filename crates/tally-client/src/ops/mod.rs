//! Client operations on a state directory, shared by the agent and by `tally client` when no
//! agent runs: status, activate, install/uninstall key, rearm, generalize, set/clear host.
//!
//! [`Client`] and its local operations are here; its other operations are `impl Client` blocks
//! in the submodules: `activate` (with a host, R19 discovery), `mak` (R25), `revocations`
//! (X7), `rollover` (X8), `discover` (probing hosts). `report` holds what they return.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tally_core::catalog::Catalog;
use tally_core::keys::{KeyKind, ProductKey};
use tally_core::lifecycle::LicenseStatus;
use tally_core::time::Timestamp;
use tally_core::trust::{TrustAnchor, parse_authority_public};
use tally_core::trusted::DEFAULT_CLOCK_TOLERANCE_SECS;
use tally_dns::discover::Discovery;

use crate::codes;
use crate::hardware;
use crate::state::{ClientState, StateError, View};

mod activate;
mod discover;
mod mak;
mod report;
mod revocations;
mod rollover;

pub use discover::{DiscoverReport, Probe};
pub use report::{OpResult, StatusReport};
pub use revocations::{ImportError, Imported};

/// The authority key file kept in a state directory.
pub const TRUST_FILE: &str = "authority.pub";

/// A client bound to a state directory.
#[derive(Debug, Clone)]
pub struct Client {
    dir: PathBuf,
    catalog: Arc<Catalog>,
    trust: Option<TrustAnchor>,
    timeout: Duration,
    discovery: Discovery,
    clock_tolerance_secs: u32,
    update_file: Option<PathBuf>,
}

impl Client {
    /// A client for `dir`. `trust` overrides `DIR/authority.pub`.
    pub fn new(dir: &Path, catalog: Arc<Catalog>, trust: Option<TrustAnchor>) -> Self {
        let trust = trust.or_else(|| {
            std::fs::read_to_string(dir.join(TRUST_FILE))
                .ok()
                .and_then(|t| parse_authority_public(&t).ok())
        });
        Self {
            dir: dir.to_owned(),
            catalog,
            trust,
            timeout: Duration::from_secs(10),
            discovery: Discovery::default(),
            clock_tolerance_secs: DEFAULT_CLOCK_TOLERANCE_SECS,
            update_file: None,
        }
    }

    /// Sets how far the local clock may go back before it is called behind (X5; default
    /// [`DEFAULT_CLOCK_TOLERANCE_SECS`]).
    pub fn with_clock_tolerance(mut self, secs: u32) -> Self {
        self.clock_tolerance_secs = secs;
        self
    }

    /// `state` as the time rules see it at local reading `local` (X5).
    pub fn view(&self, state: &ClientState, local: Timestamp) -> View {
        state.view(
            self.anchor().as_ref(),
            &self.catalog,
            local,
            self.clock_tolerance_secs,
        )
    }

    /// The trusted authority: the one given, else `DIR/authority.pub` as it is now (a handle
    /// opened before an activation kept the caller's key there still finds it), extended by the
    /// root rollovers accepted in `DIR/authority.rollover` (X8).
    fn anchor(&self) -> Option<TrustAnchor> {
        self.root()
            .map(|root| crate::rollover::anchor(&self.dir, &root))
    }

    /// The root trusted (the one given, else `DIR/authority.pub`), without rollovers.
    fn root(&self) -> Option<TrustAnchor> {
        self.trust.clone().or_else(|| {
            std::fs::read_to_string(self.dir.join(TRUST_FILE))
                .ok()
                .and_then(|t| parse_authority_public(&t).ok())
        })
    }

    /// Trusted time for `state` at local reading `local` (X5).
    fn trusted_now(&self, state: &ClientState, local: Timestamp) -> Timestamp {
        self.view(state, local).now
    }

    /// Sets how DNS discovery looks for hosts (R19).
    pub fn with_discovery(mut self, discovery: Discovery) -> Self {
        self.discovery = discovery;
        self
    }

    /// Sets the timeout of one exchange with a host.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The status at local reading `now`, on trusted time (X5). A state on hardware other
    /// than its CMID's (X6) reports out of tolerance and `copied` (reading changes nothing).
    pub fn status(&self, now: Timestamp) -> Result<StatusReport, StateError> {
        self.offer_update_file(now);
        let mut state = ClientState::load(&self.dir, now)?;
        let copied = state
            .cmid_hardware
            .as_ref()
            .is_some_and(|born| !born.within_tolerance(&hardware::probe()));
        if copied {
            state.license.check_hardware(&hardware::probe(), now);
        }
        let view = self.view(&state, now);
        let mut report = StatusReport::new(&state, &self.catalog, &view);
        if copied {
            report.copied = true;
            if report.status != LicenseStatus::Unlicensed {
                report.status = LicenseStatus::OutOfTolerance;
                report.licensed = false;
            }
        }
        Ok(report)
    }

    fn done(&self, now: Timestamp, code: u32, message: String) -> OpResult {
        OpResult {
            ok: code == 0,
            code,
            result: codes::name(code).to_owned(),
            message,
            count: None,
            threshold: None,
            status: self.status(now).ok(),
        }
    }

    /// Installs a setup key (host-activated client) or a MAK (R25). A host key is refused
    /// unless `confirm` (R22: host keys belong on hosts; a client cannot use one anyway).
    pub fn install_key(&self, key: &str, confirm: bool, now: Timestamp) -> OpResult {
        let key: ProductKey = match key.trim().parse() {
            Ok(k) => k,
            Err(e) => {
                return OpResult::from_error(&StateError::Key(format!(
                    "that is not a valid key: {e}"
                )));
            }
        };
        if key.kind() == KeyKind::Mak {
            return match ClientState::update(&self.dir, now, |s| {
                let t = self.trusted_now(s, now);
                s.install_mak(key, t)
            }) {
                Ok(()) => self.done(
                    now,
                    0,
                    "MAK installed: this client now activates directly with the vendor's authority \
                     (its URL: `tally client activate --authority URL` or the SDK's authority \
                     argument; or offline with the installation ID)"
                        .into(),
                ),
                Err(e) => OpResult::from_error(&e),
            };
        }
        if key.kind() == KeyKind::Host {
            // R22: host keys belong on hosts; on a client it takes an explicit confirmation.
            if !confirm {
                return OpResult::from_error(&StateError::Key(
                    "this is a host key: it belongs on a Tally host (`tally host install-key`), not on a client; \
                     clients install their edition's setup key (see `tally catalog list`) or a MAK. \
                     To install it here anyway, repeat with --yes"
                        .into(),
                ));
            }
            return match ClientState::update(&self.dir, now, |s| -> Result<(), StateError> {
                s.uninstall_key();
                s.key = Some(key);
                Ok(())
            }) {
                Ok(()) => self.done(
                    now,
                    0,
                    "host key installed as asked; this installation cannot activate with it \
                     (clients activate with a setup key or a MAK)"
                        .into(),
                ),
                Err(e) => OpResult::from_error(&e),
            };
        }
        let catalog = Arc::clone(&self.catalog);
        match ClientState::update(&self.dir, now, |s| {
            let t = self.trusted_now(s, now);
            s.install_setup_key(key, &catalog, t)
                .map(|e| e.name.clone())
        }) {
            Ok(name) => self.done(
                now,
                0,
                format!("installed the setup key of {name}; activation is due now"),
            ),
            Err(e) => OpResult::from_error(&e),
        }
    }

    /// Removes the key.
    pub fn uninstall_key(&self, now: Timestamp) -> OpResult {
        match ClientState::update(&self.dir, now, |s| -> Result<(), StateError> {
            s.uninstall_key();
            Ok(())
        }) {
            Ok(()) => self.done(
                now,
                0,
                "key removed; this installation is unlicensed".into(),
            ),
            Err(e) => OpResult::from_error(&e),
        }
    }

    /// R11: rearm.
    pub fn rearm(&self, now: Timestamp) -> OpResult {
        match ClientState::update(&self.dir, now, |s| {
            let t = self.trusted_now(s, now);
            s.rearm(t)
        }) {
            Ok(()) => self.done(now, 0, "grace period reset to 30 days".into()),
            Err(e) => OpResult::from_error(&e),
        }
    }

    /// R11: generalize (new CMID; the timer is reset when a rearm is left).
    pub fn generalize(&self, now: Timestamp) -> OpResult {
        let result = ClientState::update(
            &self.dir,
            now,
            |s| -> Result<Result<(), StateError>, StateError> {
                // The new CMID is kept even when no rearm is left: save in both cases.
                let t = self.trusted_now(s, now);
                Ok(s.generalize(t))
            },
        );
        match result {
            Ok(Ok(())) => self.done(
                now,
                0,
                "generalized: new CMID, grace period reset to 30 days".into(),
            ),
            Ok(Err(e)) => OpResult {
                message: format!(
                    "generalized with a new CMID, but the grace timer is unchanged: {e}"
                ),
                status: self.status(now).ok(),
                ..OpResult::from_error(&e)
            },
            Err(e) => OpResult::from_error(&e),
        }
    }

    /// R20: sets the host by hand (discovery off, cached host cleared).
    pub fn set_host(&self, host: &str, now: Timestamp) -> OpResult {
        let host = with_default_port(host);
        match ClientState::update(&self.dir, now, |s| -> Result<(), StateError> {
            s.set_manual_host(host.clone());
            Ok(())
        }) {
            Ok(()) => self.done(now, 0, format!("host set to {host}; DNS discovery is off")),
            Err(e) => OpResult::from_error(&e),
        }
    }

    /// R20: clears the manual host (discovery on).
    pub fn clear_host(&self, now: Timestamp) -> OpResult {
        match ClientState::update(&self.dir, now, |s| -> Result<(), StateError> {
            s.clear_manual_host();
            Ok(())
        }) {
            Ok(()) => self.done(now, 0, "manual host cleared; DNS discovery is on".into()),
            Err(e) => OpResult::from_error(&e),
        }
    }

    /// R12: compares the hardware with the baseline of the last success; returns whether the
    /// client went out of tolerance. X6: a state on hardware other than its CMID's takes a
    /// new CMID here too.
    pub fn check_hardware(&self, now: Timestamp) -> Result<bool, StateError> {
        let hw = hardware::probe();
        ClientState::update(&self.dir, now, |s| -> Result<bool, StateError> {
            let t = self.trusted_now(s, now);
            let moved = s.claim_hardware(&hw, t);
            Ok(s.license.check_hardware(&hw, t) || moved)
        })
    }
}

/// Appends the default port 1688 if `host` has none (`name`, `1.2.3.4`, `::1`, `[::1]`).
pub fn with_default_port(host: &str) -> String {
    let host = host.trim();
    let has_port = if let Some(rest) = host.strip_prefix('[') {
        rest.contains("]:")
    } else {
        host.matches(':').count() == 1
    };
    if has_port {
        host.to_owned()
    } else if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:1688")
    } else {
        format!("{host}:1688")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_port_is_added_only_when_missing() {
        assert_eq!(
            with_default_port("kms.example.test"),
            "kms.example.test:1688"
        );
        assert_eq!(with_default_port("10.0.0.1:99"), "10.0.0.1:99");
        assert_eq!(with_default_port("::1"), "[::1]:1688");
        assert_eq!(with_default_port("[::1]:7"), "[::1]:7");
        assert_eq!(with_default_port("[::1]"), "[::1]:1688");
        assert_eq!(with_default_port("kms"), "kms:1688");
    }
}
