//! Client operations on a state directory, shared by the agent and by `tally client` when no
//! agent runs: status, activate, install/uninstall key, rearm, generalize, set/clear host.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tally_core::catalog::Catalog;
use tally_core::keys::{KeyKind, ProductKey};
use tally_core::lifecycle::LicenseStatus;
use tally_core::time::{DAY_MS, Timestamp};
use tally_core::trust::{TrustAnchor, parse_authority_public};
use tally_proto::MachineName;
use uuid::Uuid;

use tally_dns::discover::{Discovery, Found, order};

pub use discover::{DiscoverReport, Probe};

use crate::codes;
use crate::connect::{ActivationParams, Answer, ClientError, Connector};
use crate::hardware;
use crate::state::{Attempt, ClientState, StateError};

mod discover;
mod mak;

/// The authority key file kept in a state directory.
pub const TRUST_FILE: &str = "authority.pub";

/// A report of the client's licensing state, as `status --json` and the agent print it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The CMID.
    pub cmid: Uuid,
    /// The installed edition's name.
    pub edition: Option<String>,
    /// Its SKU.
    pub sku: Option<Uuid>,
    /// The last 5 characters of the key.
    pub partial_key: Option<String>,
    /// The status now.
    pub status: LicenseStatus,
    /// Whether the vendor's software may consider itself licensed.
    pub licensed: bool,
    /// Licensed for good by a MAK activation (R25): no validity end, no renewal; `days_left`
    /// and `minutes_left` are 0 and mean nothing then. Lost only on a hardware change (R12).
    #[serde(default)]
    pub permanent: bool,
    /// End of grace (R10), Unix milliseconds.
    pub grace_end: Option<Timestamp>,
    /// End of grace (R10), RFC 3339 UTC (`2026-11-24T10:00:00Z`).
    #[serde(default)]
    pub grace_end_rfc3339: Option<String>,
    /// End of validity (R7), Unix milliseconds; none for a permanent activation.
    pub validity_end: Option<Timestamp>,
    /// End of validity (R7), RFC 3339 UTC.
    #[serde(default)]
    pub validity_end_rfc3339: Option<String>,
    /// Whole days left of grace or validity (rounded down; 0 when neither runs).
    pub days_left: u32,
    /// Minutes left of grace or validity.
    pub minutes_left: u32,
    /// When the next activation or renewal is due (R8), Unix milliseconds.
    pub next_attempt: Option<Timestamp>,
    /// When the next activation or renewal is due (R8), RFC 3339 UTC.
    #[serde(default)]
    pub next_attempt_rfc3339: Option<String>,
    /// Retry interval in force, seconds (R8, R9).
    pub activation_interval_secs: u32,
    /// Renewal interval in force, seconds (R8, R9).
    pub renewal_interval_secs: u32,
    /// Rearms left (R11).
    pub rearms_left: u8,
    /// A host set by hand (R20).
    pub manual_host: Option<String>,
    /// The cached host (R19).
    pub cached_host: Option<String>,
    /// The latest attempt.
    pub last_attempt: Option<Attempt>,
}

impl StatusReport {
    /// Reports `state` at `now`.
    pub fn new(state: &ClientState, catalog: &Catalog, now: Timestamp) -> Self {
        let l = &state.license;
        let status = l.status_at(now);
        let minutes_left = l.minutes_left(now);
        let utc = |t: Option<Timestamp>| t.map(Timestamp::to_rfc3339);
        Self {
            cmid: state.cmid,
            edition: state.edition(catalog).map(|e| e.name.clone()),
            sku: state.sku,
            partial_key: state.key.map(ProductKey::partial),
            status,
            licensed: status == LicenseStatus::Licensed,
            permanent: status == LicenseStatus::Licensed && l.permanent,
            grace_end: l.grace_end,
            grace_end_rfc3339: utc(l.grace_end),
            validity_end: l.validity_end,
            validity_end_rfc3339: utc(l.validity_end),
            days_left: (i64::from(minutes_left) * 60_000 / DAY_MS) as u32,
            minutes_left,
            next_attempt: l.next_attempt,
            next_attempt_rfc3339: utc(l.next_attempt),
            activation_interval_secs: l.intervals.activation_secs,
            renewal_interval_secs: l.intervals.renewal_secs,
            rearms_left: l.rearms_left,
            manual_host: state.manual_host.clone(),
            cached_host: state.cached_host.clone(),
            last_attempt: state.last_attempt.clone(),
        }
    }
}

/// The outcome of an operation, as the agent returns it and the CLI prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    /// Whether the operation did what was asked (for activate: activated).
    pub ok: bool,
    /// The result code (R14).
    pub code: u32,
    /// Its name.
    pub result: String,
    /// A sentence for people.
    pub message: String,
    /// The count, for activations that reached a host.
    pub count: Option<u32>,
    /// The edition's threshold, for activations.
    pub threshold: Option<u16>,
    /// The state after the operation.
    pub status: Option<StatusReport>,
}

impl OpResult {
    fn from_error(err: &StateError) -> Self {
        Self {
            ok: false,
            code: err.code(),
            result: codes::name(err.code()).to_owned(),
            message: err.to_string(),
            count: None,
            threshold: None,
            status: None,
        }
    }
}

/// A client bound to a state directory.
#[derive(Debug, Clone)]
pub struct Client {
    dir: PathBuf,
    catalog: Arc<Catalog>,
    trust: Option<TrustAnchor>,
    timeout: Duration,
    discovery: Discovery,
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
        }
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

    /// The status now.
    pub fn status(&self, now: Timestamp) -> Result<StatusReport, StateError> {
        Ok(StatusReport::new(
            &ClientState::load(&self.dir, now)?,
            &self.catalog,
            now,
        ))
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
            return match ClientState::update(&self.dir, now, |s| s.install_mak(key, now)) {
                Ok(()) => self.done(
                    now,
                    0,
                    "MAK installed: this client now activates directly with the vendor's authority \
                     (`tally client activate --authority URL`, or --offline)"
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
            s.install_setup_key(key, &catalog, now)
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
        match ClientState::update(&self.dir, now, |s| s.rearm(now)) {
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
                Ok(s.generalize(now))
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

    /// Activates (or renews) now: at `host` if given, else the manual or cached host.
    pub async fn activate(
        &self,
        host: Option<&str>,
        machine_name: &str,
        now: Timestamp,
    ) -> OpResult {
        let state = match ClientState::load(&self.dir, now) {
            Ok(s) => s,
            Err(e) => return OpResult::from_error(&e),
        };
        if state.is_mak() {
            // R25: a MAK client activates with the authority, never with a host.
            return self.activate_mak(None, now).await;
        }
        let Some(edition) = state.edition(&self.catalog).cloned() else {
            return OpResult::from_error(&StateError::Key(
                "no key installed: run `tally client install-key SETUP_KEY` first (see `tally catalog list`)".into(),
            ));
        };
        let Some(trust) = self.trust.clone() else {
            return self.done(
                now,
                codes::NO_TRUST,
                format!(
                    "no trusted authority key: pass --trust FILE or copy it to {} with `tally client trust FILE`",
                    self.dir.join(TRUST_FILE).display()
                ),
            );
        };
        let connector = Connector::new(trust, self.timeout);
        for cert in state.certificates() {
            // A remembered certificate that no longer verifies is simply fetched again.
            let _ = connector.remember(cert, now);
        }
        let hw = hardware::probe();
        let params = ActivationParams {
            cmid: state.cmid,
            edition: edition.clone(),
            machine_name: MachineName::lossy(machine_name),
            license_state: state.status(now).wire(),
            grace_remaining_minutes: state.license.minutes_left(now),
        };
        let explicit = host
            .map(with_default_port)
            .or_else(|| state.manual_host.clone());
        let (outcome, host) = match explicit {
            // R20: a host given by hand is the only one tried.
            Some(h) => (connector.activate(&h, &params, now).await, h),
            None => {
                self.activate_discovered(&connector, &params, state.cached_host.clone(), now)
                    .await
            }
        };
        let cmid = state.cmid;
        let certs = connector.certificates();
        let saved = ClientState::update(&self.dir, now, |s| -> Result<(), StateError> {
            s.set_certificates(&certs);
            // A generalize that ran meanwhile made a new CMID: this answer is not for it.
            if s.cmid != cmid {
                return Ok(());
            }
            match &outcome {
                Ok(answer) => s.apply_answer(answer, Some(&hw), now),
                Err(e) => s.record_failure(Some(host.clone()), e.code_name(), e.code(), now),
            }
            Ok(())
        });
        if let Err(e) = saved {
            return OpResult::from_error(&e);
        }
        let status = self.status(now).ok();
        match outcome {
            Ok(a) => {
                let code = if !a.result.is_success() {
                    a.result.0
                } else if a.activated {
                    0
                } else {
                    codes::BELOW_THRESHOLD
                };
                let message = if a.activated {
                    format!(
                        "activated {} (count {} of {} needed)",
                        edition.name, a.count, a.threshold
                    )
                } else if a.result.is_success() {
                    format!(
                        "not activated yet: the host counts {} machine(s), {} needs {}; still in grace, retrying later",
                        a.count, edition.name, a.threshold
                    )
                } else {
                    format!("the host refused: {}", a.result)
                };
                OpResult {
                    ok: a.activated,
                    code,
                    result: codes::name(code).to_owned(),
                    message,
                    count: Some(a.count),
                    threshold: Some(a.threshold),
                    status,
                }
            }
            Err(e) => OpResult {
                ok: false,
                code: e.code(),
                result: e.code_name().to_owned(),
                message: e.to_string(),
                count: None,
                threshold: Some(edition.threshold),
                status,
            },
        }
    }

    /// R19: the cached host first; if it does not answer, DNS in RFC 2782 order, dropping each
    /// host that does not answer; the first that answers is used (and cached by the caller).
    async fn activate_discovered(
        &self,
        connector: &Connector,
        params: &ActivationParams,
        cached: Option<String>,
        now: Timestamp,
    ) -> (Result<Answer, ClientError>, String) {
        let mut tried: Vec<String> = Vec::new();
        let mut last: Option<(ClientError, String)> = None;
        if let Some(c) = cached {
            match connector.activate(&c, params, now).await {
                Ok(a) => return (Ok(a), c),
                Err(e) => {
                    tracing::info!(host = %c, error = %e, "cached host failed; asking DNS again");
                    tried.push(c.clone());
                    last = Some((e, c));
                }
            }
        }
        let found = match self.discovery.lookup().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "DNS discovery failed");
                Found::default()
            }
        };
        // The thread-local RNG must not live across an await: order first, then try.
        let ordered = order(found.candidates, &mut rand::rng());
        for candidate in ordered {
            for addr in &candidate.addresses {
                let a = addr.to_string();
                if tried.contains(&a) {
                    continue;
                }
                tried.push(a.clone());
                match connector.activate(&a, params, now).await {
                    Ok(answer) => return (Ok(answer), a),
                    Err(e) => {
                        tracing::info!(host = %candidate.target, address = %a, error = %e, "host did not answer; trying the next");
                        last = Some((e, a));
                    }
                }
            }
        }
        match last {
            Some((e, h)) => (Err(e), h),
            None => (
                Err(ClientError::Connect {
                    host: "(none)".into(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!(
                            "no host set and none found in DNS ({})",
                            found.notes.join("; ")
                        ),
                    ),
                }),
                String::new(),
            ),
        }
    }

    /// R12: compares the hardware with the baseline of the last success; returns whether the
    /// client went out of tolerance.
    pub fn check_hardware(&self, now: Timestamp) -> Result<bool, StateError> {
        let hw = hardware::probe();
        ClientState::update(&self.dir, now, |s| -> Result<bool, StateError> {
            Ok(s.license.check_hardware(&hw, now))
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
