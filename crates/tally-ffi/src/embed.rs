//! The safe, blocking API that the C ABI ([`crate::capi`]) and the Python package wrap.
//!
//! A [`Handle`] owns a small Tokio runtime (one worker thread) and blocks the calling thread on
//! it, so no async runtime leaks into the caller. Every method takes `&self` and may be called
//! from several threads at once: the state file is locked per operation
//! ([`tally_client::ClientState::update`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tally_client::agent::{Licensing, machine_name};
use tally_client::codes;
use tally_client::ops::{Client, OpResult};
use tally_client::{LicenseStatus, StatusReport};
use tally_core::catalog::Catalog;
use tally_core::time::{Clock, SystemClock};
use tally_core::trust::parse_authority_public;
use thiserror::Error;
use tracing::Dispatch;
use tracing::instrument::WithSubscriber;

use crate::logging::{LogLevel, Logger};

/// The default timeout of a call that may use the network (an activation, a status asked of
/// the agent): long enough for DNS discovery to try a few hosts at 10 s each.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest one exchange with a host or the authority may take within a call.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`Handle::wait_for_change`] looks at the state.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

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
    /// The CMID: this installation's id as hosts count it (changes on generalize, on a copied
    /// state and when a host saw a clone, X6).
    pub cmid: String,
    /// End of grace (R10), Unix milliseconds, when in grace.
    pub grace_end_ms: Option<i64>,
    /// End of validity (R7), Unix milliseconds; `None` before activation and for a MAK.
    pub validity_end_ms: Option<i64>,
    /// When the next activation or renewal attempt is due (R8), Unix milliseconds.
    pub next_attempt_ms: Option<i64>,
    /// X7: why the license was taken back (its MAK, or the host that activated it, is on the
    /// vendor's revocation list); `None` when it was not.
    pub revoked: Option<String>,
    /// X7: the serial of the newest revocation list this installation holds (0: none).
    pub revocation_serial: u32,
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
            cmid: r.cmid.to_string(),
            grace_end_ms: r.grace_end.map(|t| t.0),
            validity_end_ms: r.validity_end.map(|t| t.0),
            next_attempt_ms: r.next_attempt.map(|t| t.0),
            revoked: r.revoked.clone(),
            revocation_serial: r.revocation_serial,
            report: r,
        }
    }
}

/// What makes a license state "changed" for [`Handle::wait_for_change`]: the state and whether
/// it is licensed, the edition, the end of grace or validity (a renewal moves it), the CMID and
/// a revocation. The minutes left, which fall by themselves, are not part of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeKey {
    /// The state.
    pub state: LicenseStatus,
    /// Licensed.
    pub licensed: bool,
    /// Licensed for good (MAK).
    pub permanent: bool,
    /// The edition's name.
    pub edition: Option<String>,
    /// End of grace, Unix ms.
    pub grace_end_ms: Option<i64>,
    /// End of validity, Unix ms.
    pub validity_end_ms: Option<i64>,
    /// The CMID.
    pub cmid: String,
    /// Whether the license was revoked.
    pub revoked: bool,
}

impl Status {
    /// The part of the status whose change [`Handle::wait_for_change`] reports.
    pub fn change_key(&self) -> ChangeKey {
        ChangeKey {
            state: self.state,
            licensed: self.licensed,
            permanent: self.permanent,
            edition: self.edition.clone(),
            grace_end_ms: self.grace_end_ms,
            validity_end_ms: self.validity_end_ms,
            cmid: self.cmid.clone(),
            revoked: self.revoked.is_some(),
        }
    }
}

/// Where and how [`Handle::activate_with`] activates. Every field is optional.
#[derive(Clone, Copy, Debug, Default)]
pub struct ActivateOptions<'a> {
    /// `HOST[:PORT]` (default port 1688), for this attempt only; a setup-key installation.
    pub host: Option<&'a str>,
    /// The vendor's authority URL (`https://…`), for a MAK installation (R25); remembered in
    /// the state, so later activations need it no more.
    pub authority: Option<&'a str>,
    /// The authority's public key file; overrides `STATE_DIR/authority.pub` (and is kept
    /// there after the first verified answer when that file does not exist).
    pub trust: Option<&'a Path>,
    /// The whole call's deadline; the handle's timeout ([`Handle::set_timeout`]) when `None`.
    pub timeout: Option<Duration>,
}

/// An installation's licensing, opened on its state directory.
pub struct Handle {
    runtime: tokio::runtime::Runtime,
    dir: PathBuf,
    catalog: Arc<Catalog>,
    licensing: Licensing,
    client: Client,
    timeout: RwLock<Duration>,
    log: RwLock<Option<Dispatch>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
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
            timeout: RwLock::new(DEFAULT_TIMEOUT),
            log: RwLock::new(None),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sets the deadline of every later call that may use the network (activation, status
    /// through the agent) on this handle; [`DEFAULT_TIMEOUT`] until set. A zero duration
    /// restores the default.
    pub fn set_timeout(&self, timeout: Duration) {
        let t = if timeout.is_zero() {
            DEFAULT_TIMEOUT
        } else {
            timeout
        };
        *self.timeout.write().unwrap_or_else(PoisonError::into_inner) = t;
    }

    /// The deadline of a call that may use the network.
    pub fn timeout(&self) -> Duration {
        *self.timeout.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends this handle's log lines at `max` and more severe to `logger` (called on the
    /// calling thread, during a call); `None` stops it. Never logs a product key.
    pub fn set_logger(&self, logger: Option<Logger>, max: LogLevel) {
        let d = logger.map(|l| crate::logging::dispatch(l, max));
        *self.log.write().unwrap_or_else(PoisonError::into_inner) = d;
    }

    fn dispatch(&self) -> Option<Dispatch> {
        self.log
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs a local operation with the handle's logger.
    fn local<T>(&self, f: impl FnOnce() -> T) -> T {
        match self.dispatch() {
            Some(d) => tracing::dispatcher::with_default(&d, f),
            None => f(),
        }
    }

    /// Runs `fut` on the handle's runtime with its logger, within `timeout`.
    fn run<F: Future>(&self, timeout: Duration, fut: F) -> Result<F::Output, Error> {
        // The timer is made inside the runtime, which drives it.
        let fut = async move { tokio::time::timeout(timeout, fut).await };
        let out = match self.dispatch() {
            Some(d) => self.runtime.block_on(fut.with_subscriber(d)),
            None => self.runtime.block_on(fut),
        };
        out.map_err(|_| {
            Error::new(
                codes::HOST_TIMEOUT,
                format!(
                    "the call did not finish within its timeout of {} ms; it was stopped (the \
                     state stays as it was before or after the exchange in flight)",
                    timeout.as_millis()
                ),
            )
        })
    }

    /// Installs a setup key (host-activated client) or a MAK (R25). A host key is refused
    /// (`KEY_NOT_USABLE`): it belongs on a host (R22).
    pub fn install_key(&self, key: &str) -> Result<String, Error> {
        self.local(|| done(self.client.install_key(key, false, SystemClock.now())))
    }

    /// Removes the key: the installation is unlicensed (its CMID and rearm count stay).
    pub fn uninstall_key(&self) -> Result<String, Error> {
        self.local(|| done(self.client.uninstall_key(SystemClock.now())))
    }

    /// R11: prepares an installation to be imaged: a new CMID, and the grace period reset when
    /// a rearm is left (`NO_REARM_LEFT` after the CMID changed when none is).
    pub fn generalize(&self) -> Result<String, Error> {
        self.local(|| done(self.client.generalize(SystemClock.now())))
    }

    /// R20: activates at `host` (`HOST[:PORT]`, default port 1688) from now on, with DNS
    /// discovery off. An empty host is `INVALID_ARGUMENT`.
    pub fn set_host(&self, host: &str) -> Result<String, Error> {
        if host.trim().is_empty() || host.chars().any(char::is_whitespace) {
            return Err(Error::new(
                codes::INVALID_ARGUMENT,
                "the host must be HOST or HOST:PORT, without spaces",
            ));
        }
        self.local(|| done(self.client.set_host(host, SystemClock.now())))
    }

    /// R20: forgets the host set by hand: DNS discovery is on again.
    pub fn clear_host(&self) -> Result<String, Error> {
        self.local(|| done(self.client.clear_host(SystemClock.now())))
    }

    /// Activates now. With neither `host` nor `trust`, through the agent when one runs (any
    /// user may ask it, R13), else directly at the manual or cached host or by DNS discovery
    /// (R19, R20). `host` (`HOST[:PORT]`, default port 1688) is used for this attempt only;
    /// `trust` is an authority public key file that overrides `STATE_DIR/authority.pub`.
    ///
    /// Below the threshold is not an error: it returns `activated == false` with
    /// `BELOW_THRESHOLD`. Every other failure is an [`Error`].
    pub fn activate(&self, host: Option<&str>, trust: Option<&Path>) -> Result<Activation, Error> {
        self.activate_with(&ActivateOptions {
            host,
            trust,
            ..ActivateOptions::default()
        })
    }

    /// Activates now, as [`Handle::activate`], with an authority URL for a MAK (R25) and a
    /// deadline for this call. A MAK installation activates with the authority (the URL given,
    /// else the one remembered), a setup-key installation with a host.
    pub fn activate_with(&self, opts: &ActivateOptions<'_>) -> Result<Activation, Error> {
        let timeout = opts.timeout.unwrap_or_else(|| self.timeout());
        let op = match (opts.host, opts.authority, opts.trust) {
            (None, None, None) => self
                .run(timeout, self.licensing.activate())?
                .map_err(|e| Error::new(codes::STATE_UNAVAILABLE, e.to_string()))?,
            (host, authority, trust) => {
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
                }
                .with_timeout(timeout.min(EXCHANGE_TIMEOUT));
                match authority {
                    Some(url) => {
                        self.run(timeout, client.activate_mak(Some(url), SystemClock.now()))?
                    }
                    None => self.run(
                        timeout,
                        client.activate(host, &machine_name(), SystemClock.now()),
                    )?,
                }
            }
        };
        // The outcome, for the application's logging hook (never a key: messages hold none).
        self.local(|| {
            tracing::info!(
                code = %format_args!("0x{:08X}", op.code),
                result = %op.result,
                detail = %op.message,
                "activation attempt finished"
            );
        });
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

    /// R25 offline, step 1: the installation ID of a MAK installation, digit groups separated
    /// by spaces, for the user to give the vendor (`tally authority confirm ID`).
    /// `KEY_NOT_USABLE` when no MAK is installed.
    pub fn installation_id(&self) -> Result<String, Error> {
        self.local(|| {
            self.client
                .mak_installation_id(SystemClock.now())
                .map(|groups| groups.join(" "))
                .map_err(|e| Error::new(e.code(), e.to_string()))
        })
    }

    /// R25 offline, step 2: applies the confirmation ID the vendor gave (digit groups; spaces
    /// and dashes are ignored). Needs the authority's key in `STATE_DIR/authority.pub`
    /// (`NO_TRUST`); a confirmation for another installation is `UNTRUSTED_RESPONSE`.
    pub fn confirm(&self, confirmation_id: &str) -> Result<String, Error> {
        self.local(|| done(self.client.mak_confirm(confirmation_id, SystemClock.now())))
    }

    /// The license status: from the agent when it runs, else read from the state directory.
    pub fn status(&self) -> Result<Status, Error> {
        self.run(self.timeout(), self.licensing.status())?
            .map(Status::from)
            .map_err(|e| {
                let code = match &e {
                    tally_client::agent::AgentError::State(s) => s.code(),
                    _ => codes::STATE_UNAVAILABLE,
                };
                Error::new(code, e.to_string())
            })
    }

    /// The status read from the state directory alone (never the agent).
    fn local_status(&self) -> Result<Status, Error> {
        self.local(|| self.client.status(SystemClock.now()))
            .map(Status::from)
            .map_err(|e| Error::new(e.code(), e.to_string()))
    }

    /// Blocks until the license state differs from `known` (its [`ChangeKey`]; the state at
    /// the call's start when `None`) or `timeout` passes: `Some(new status)` on a change,
    /// `None` on the timeout. Whoever changes the state — this process, another one, the agent
    /// renewing, or time running out of grace — is seen: the state directory is looked at
    /// every 200 ms. Pass the status you last showed as `known` so no change between two
    /// calls is missed.
    pub fn wait_for_change(
        &self,
        known: Option<&ChangeKey>,
        timeout: Duration,
    ) -> Result<Option<Status>, Error> {
        let deadline = Instant::now() + timeout;
        let known = match known {
            Some(k) => k.clone(),
            None => self.local_status()?.change_key(),
        };
        loop {
            let now = self.local_status()?;
            if now.change_key() != known {
                return Ok(Some(now));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            std::thread::sleep(left.min(WATCH_INTERVAL));
        }
    }

    /// R11: grace back to 30 days, at most 3 times (`NO_REARM_LEFT` after that).
    pub fn rearm(&self) -> Result<String, Error> {
        self.local(|| done(self.client.rearm(SystemClock.now())))
    }
}

/// An operation's message, or its error.
fn done(op: OpResult) -> Result<String, Error> {
    if op.ok {
        Ok(op.message)
    } else {
        Err(Error::from_op(op))
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
