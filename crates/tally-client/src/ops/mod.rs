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
use crate::connect::Installation;
use crate::connect::{ActivationParams, Answer, ClientError, Connector};
use crate::hardware;
use crate::state::{Attempt, ClientState, CmidChange, StateError, View};
use tally_core::trusted::DEFAULT_CLOCK_TOLERANCE_SECS;

/// Sequence numbers reserved (and saved) per activation attempt (X6): one per host tried.
const SEQUENCE_BLOCK: u32 = 64;

mod discover;
mod mak;
mod revocations;

pub use revocations::{ImportError, Imported};
mod rollover;

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
    /// X5: the local clock is this many seconds behind the latest reading seen: nothing is
    /// extended and the installation is out of grace (notification) until the clock is right
    /// again or a host answers. `None` when it is not.
    #[serde(default)]
    pub clock_behind_secs: Option<i64>,
    /// X5: the trusted time the status was computed at (the hosts' signed time plus the local
    /// time elapsed since), RFC 3339 UTC.
    #[serde(default)]
    pub trusted_time_rfc3339: Option<String>,
    /// X6: the CMID's last change by the client itself (state copied to other hardware, or a
    /// host saw another installation present it).
    #[serde(default)]
    pub cmid_change: Option<CmidChange>,
    /// X6: this state runs on hardware past tolerance of the hardware its CMID was made on (a
    /// copied state directory): the next activation takes a new CMID.
    #[serde(default)]
    pub copied: bool,
    /// X7: why the license was taken back (its MAK, or the host that activated it, is on the
    /// vendor's revocation list).
    #[serde(default)]
    pub revoked: Option<String>,
    /// X7: the serial of the newest revocation list this client holds (0: none).
    #[serde(default)]
    pub revocation_serial: u32,
}

impl StatusReport {
    /// Reports `state` as the time rules see it (`view`, from [`ClientState::view`]).
    pub fn new(state: &ClientState, catalog: &Catalog, view: &View) -> Self {
        let l = &view.license;
        let status = view.status();
        let minutes_left = view.minutes_left();
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
            clock_behind_secs: view.clock_behind_ms.map(|ms| ms / 1000),
            trusted_time_rfc3339: Some(view.now.to_rfc3339()),
            cmid_change: state.cmid_change.clone(),
            copied: false,
            revoked: view.revoked.clone(),
            revocation_serial: view.revocation_serial,
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

    /// X8: keeps the rollover statements a host handed over (verified by the connector from
    /// the root trusted) in `DIR/authority.rollover`.
    fn keep_rollover(&self, connector: &Connector) {
        let (Some(root), Some(chain)) = (self.root(), connector.grown_chain()) else {
            return;
        };
        if chain.statements().len() == crate::rollover::chain(&self.dir, &root).statements().len() {
            return;
        }
        if let Err(error) = crate::rollover::import(&self.dir, &root, &chain.to_text()) {
            tracing::warn!(%error, "cannot keep the root rollover a host handed over");
        }
    }

    /// X5: the evidence in the state is verified against the trusted authority key. A key the
    /// caller passed (`--trust FILE`, the embedding API's trust argument) is kept as
    /// `DIR/authority.pub` after the first verified answer when that file does not exist, so a
    /// later status, which is given no key, can still check the evidence. An existing file is
    /// never replaced.
    fn keep_trust(&self, connector: &Connector) {
        let path = self.dir.join(TRUST_FILE);
        if path.exists() {
            return;
        }
        let text = tally_core::trust::armor(
            tally_core::trust::labels::AUTHORITY_PUBLIC,
            connector.anchor().key().as_bytes(),
        );
        if let Err(error) =
            crate::fsmode::write_new(&path, text.as_bytes(), crate::fsmode::PUBLIC_FILE)
        {
            tracing::warn!(path = %path.display(), %error, "cannot keep the trusted authority key");
        }
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

    /// Activates (or renews) now: at `host` if given, else the manual or cached host. `now`
    /// is the local reading; the lifecycle runs on trusted time (X5). A state copied to other
    /// hardware takes a new CMID first; a host that reports a clone (another installation
    /// presents this CMID) makes it take a new CMID and ask once more (X6).
    pub async fn activate(
        &self,
        host: Option<&str>,
        machine_name: &str,
        now: Timestamp,
    ) -> OpResult {
        self.offer_update_file(now);
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
        let Some(trust) = self.anchor() else {
            return self.done(
                now,
                codes::NO_TRUST,
                format!(
                    "no trusted authority key: pass --trust FILE or copy it to {} with `tally client trust FILE`",
                    self.dir.join(TRUST_FILE).display()
                ),
            );
        };
        let mut connector = Connector::new(trust.clone(), self.timeout)
            .with_revocations(state.held_revocations(Some(&trust)));
        if let Some(root) = self.root() {
            connector = connector.with_chain(crate::rollover::chain(&self.dir, &root));
        }
        // X5: certificates are checked at trusted time (a clock set back does not make a
        // host's certificate "not yet valid"; one set forward does not keep an expired one).
        let trusted = self.trusted_now(&state, now);
        for cert in state.certificates() {
            // A remembered certificate that no longer verifies is simply fetched again.
            let _ = connector.remember(cert, trusted);
        }
        let hw = hardware::probe();
        let explicit = host
            .map(with_default_port)
            .or_else(|| state.manual_host.clone());
        let mut rounds = 0;
        let (outcome, host) = loop {
            rounds += 1;
            // X6: claim the hardware (a copied state takes a new CMID) and reserve sequence
            // numbers, saved before any request carries one.
            let prepared = ClientState::update(&self.dir, now, |s| -> Result<_, StateError> {
                let t = self.trusted_now(s, now);
                if s.claim_hardware(&hw, t) {
                    tracing::warn!(previous = ?s.cmid_change.as_ref().map(|c| c.previous), cmid = %s.cmid,
                        "this state directory now runs on other hardware: took a new CMID");
                }
                let first = s.reserve_sequence(SEQUENCE_BLOCK);
                let view = self.view(s, now);
                Ok((
                    s.cmid,
                    first,
                    view.status(),
                    view.minutes_left(),
                    s.cached_host.clone(),
                    view.now,
                ))
            });
            let (cmid, first, status, minutes_left, cached, trusted) = match prepared {
                Ok(p) => p,
                Err(e) => return OpResult::from_error(&e),
            };
            let params = ActivationParams {
                cmid,
                edition: edition.clone(),
                machine_name: MachineName::lossy(machine_name),
                license_state: status.wire(),
                grace_remaining_minutes: minutes_left,
                installation: Some(Installation::new(
                    first,
                    first.wrapping_add(SEQUENCE_BLOCK - 1),
                    hw.digest(),
                )),
            };
            let (outcome, host) = match &explicit {
                // R20: a host given by hand is the only one tried.
                Some(h) => (connector.activate(h, &params, trusted).await, h.clone()),
                None => {
                    self.activate_discovered(&connector, &params, cached, trusted)
                        .await
                }
            };
            let clone =
                matches!(&outcome, Ok(a) if a.result == tally_proto::ResultCode::CLONE_DETECTED);
            let certs = connector.certificates();
            let saved = ClientState::update(&self.dir, now, |s| -> Result<(), StateError> {
                s.set_certificates(&certs);
                // X7: the newest list any host gave, kept (never an older one).
                if let Some(list) = connector.revocations().list() {
                    let _ = s.offer_revocations(&trust, list.clone());
                }
                // A generalize that ran meanwhile made a new CMID: this answer is not for it.
                if s.cmid != cmid {
                    return Ok(());
                }
                match &outcome {
                    Ok(answer) => {
                        s.apply_answer(answer, Some(&hw), now);
                        if clone {
                            // X6: another installation presents this CMID: count apart.
                            s.new_cmid("clone_detected", answer.host_time);
                            s.cmid_hardware = Some(hw.clone());
                        }
                    }
                    Err(e) => {
                        let t = self.trusted_now(s, now);
                        s.record_failure(Some(host.clone()), e.code_name(), e.code(), t);
                    }
                }
                Ok(())
            });
            if let Err(e) = saved {
                return OpResult::from_error(&e);
            }
            if outcome.is_ok() {
                self.keep_trust(&connector);
            }
            // Whatever the outcome: a list kept above may need these statements to verify.
            self.keep_rollover(&connector);
            if clone && rounds < 2 {
                tracing::warn!(host = %host, previous = %cmid,
                    "the host saw another installation present this CMID: took a new CMID, asking again");
                continue;
            }
            break (outcome, host);
        };
        let _ = host;
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
