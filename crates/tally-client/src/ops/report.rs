//! What operations report: the client's licensing state ([`StatusReport`], as `status --json`
//! and the agent print it) and the outcome of one operation ([`OpResult`]).

use serde::{Deserialize, Serialize};
use tally_core::catalog::Catalog;
use tally_core::keys::ProductKey;
use tally_core::lifecycle::LicenseStatus;
use tally_core::time::{DAY_MS, Timestamp};
use uuid::Uuid;

use crate::codes;
use crate::state::{Attempt, ClientState, CmidChange, StateError, View};

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
    pub(super) fn from_error(err: &StateError) -> Self {
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
