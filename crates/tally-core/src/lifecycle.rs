//! The client's licensing lifecycle, sans-I/O: R2 and R7–R12.
//!
//! [`License`] is a plain value (serialisable into the client's state file). Every method takes
//! the current time; nothing here reads a clock, a file or a socket, so a test can run a client
//! through 400 simulated days in milliseconds.
//!
//! ```text
//!   unlicensed ──install──▶ initial_grace ──count ≥ threshold──▶ licensed ──┐
//!                              │  ▲                                   │  ▲      │ renew every
//!            30 days, no       │  │ rearm / generalize               │  │      │ renewal interval
//!            activation (R10)  ▼  │ (≤ 3, R11)          180 days w/o  │  └──────┘ (R7, R8)
//!                           notification ◀──────────────── renewal ───┘
//!   any licensed state ──hardware change past tolerance (R12)──▶ out_of_tolerance ──success──▶ licensed
//! ```

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::hardware::Hardware;
use crate::host::Intervals;
use crate::time::{MINUTE_MS, Timestamp};

/// R10: days of initial grace.
pub const GRACE_DAYS: i64 = 30;
/// R7: days of validity after a successful activation or renewal.
pub const VALIDITY_DAYS: i64 = 180;
/// R11: rearms an installation has.
pub const MAX_REARMS: u8 = 3;
/// Shortest interval a client keeps from a host's answer (R9), in seconds: a host's 0 is 1.
pub const MIN_INTERVAL_SECS: u32 = 1;

/// Where a client stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LicenseStatus {
    /// No key installed.
    Unlicensed,
    /// Working unactivated within the 30-day grace period (R10).
    InitialGrace,
    /// Activated (R2) and within its 180 days (R7).
    Licensed,
    /// Grace or validity ran out (R10): the vendor's software decides what that means.
    Notification,
    /// Hardware changed past tolerance; reactivation needed (R12).
    OutOfTolerance,
}

impl std::fmt::Display for LicenseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unlicensed => "unlicensed",
            Self::InitialGrace => "initial grace",
            Self::Licensed => "licensed",
            Self::Notification => "notification",
            Self::OutOfTolerance => "out of tolerance",
        })
    }
}

impl LicenseStatus {
    /// The wire form sent to hosts.
    pub fn wire(self) -> tally_proto::LicenseState {
        use tally_proto::LicenseState as W;
        match self {
            Self::Unlicensed => W::Unlicensed,
            Self::InitialGrace => W::InitialGrace,
            Self::Licensed => W::Licensed,
            Self::Notification => W::Notification,
            Self::OutOfTolerance => W::OutOfTolerance,
        }
    }
}

/// Why a lifecycle operation was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LifecycleError {
    /// R11: all three rearms are used.
    #[error("no rearm left: this installation was rearmed {MAX_REARMS} times already (R11)")]
    NoRearmLeft,
    /// A key is needed first.
    #[error("no key installed: install the edition's setup key first")]
    NoKey,
}

/// What the last attempt to reach a host gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The host answered with a count; `activated` is count ≥ threshold (R2).
    Counted {
        /// Whether the threshold was reached.
        activated: bool,
        /// The host's intervals (R9).
        intervals: Intervals,
    },
    /// The host could not be reached or its answer was not trusted or was a refusal.
    Failed,
}

/// A client's licensing state and timers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct License {
    /// Status as of the last evaluation (see [`License::status_at`] for the live value).
    pub status: LicenseStatus,
    /// End of grace (R10, R11).
    pub grace_end: Option<Timestamp>,
    /// End of validity (R7).
    pub validity_end: Option<Timestamp>,
    /// Last successful activation or renewal.
    pub last_success: Option<Timestamp>,
    /// When the next activation or renewal attempt is due (R8).
    pub next_attempt: Option<Timestamp>,
    /// Intervals in force: the last host's, else the defaults (R9).
    pub intervals: Intervals,
    /// Rearms left (R11).
    pub rearms_left: u8,
    /// The hardware at the last successful activation (R12).
    pub hardware: Option<Hardware>,
    /// A MAK activation (R25): permanent, no renewal, within hardware tolerance (R12).
    #[serde(default)]
    pub permanent: bool,
}

impl Default for License {
    fn default() -> Self {
        Self {
            status: LicenseStatus::Unlicensed,
            grace_end: None,
            validity_end: None,
            last_success: None,
            next_attempt: None,
            intervals: Intervals::default(),
            rearms_left: MAX_REARMS,
            hardware: None,
            permanent: false,
        }
    }
}

impl License {
    /// The status at `now`: grace and validity run out by themselves (R7, R10).
    pub fn status_at(&self, now: Timestamp) -> LicenseStatus {
        match self.status {
            LicenseStatus::InitialGrace if self.grace_end.is_some_and(|e| now >= e) => {
                LicenseStatus::Notification
            }
            LicenseStatus::Licensed if self.validity_end.is_some_and(|e| now >= e) => {
                LicenseStatus::Notification
            }
            s => s,
        }
    }

    /// Stores the live status (call before saving or reporting).
    pub fn refresh(&mut self, now: Timestamp) -> LicenseStatus {
        self.status = self.status_at(now);
        self.status
    }

    /// Minutes left in the current grace or validity period.
    pub fn minutes_left(&self, now: Timestamp) -> u32 {
        let end = match self.status_at(now) {
            LicenseStatus::Licensed => self.validity_end,
            LicenseStatus::InitialGrace => self.grace_end,
            _ => None,
        };
        end.map_or(0, |e| {
            ((e.0 - now.0).max(0) / MINUTE_MS).min(i64::from(u32::MAX)) as u32
        })
    }

    /// A setup key was installed: initial grace starts (R10) and activation is due now.
    /// Installing the same edition's key again changes nothing.
    pub fn install(&mut self, now: Timestamp) {
        if self.status == LicenseStatus::Unlicensed {
            self.status = LicenseStatus::InitialGrace;
            self.grace_end = Some(now.plus_days(GRACE_DAYS));
            self.next_attempt = Some(now);
        }
    }

    /// The key was removed.
    pub fn uninstall(&mut self) {
        *self = Self {
            rearms_left: self.rearms_left,
            ..Self::default()
        };
    }

    /// Whether an attempt is due at `now` (R8).
    pub fn is_due(&self, now: Timestamp) -> bool {
        if self.permanent && self.status == LicenseStatus::Licensed {
            return false; // R25: a MAK activation is not renewed
        }
        self.status != LicenseStatus::Unlicensed && self.next_attempt.is_none_or(|t| now >= t)
    }

    /// The next moment the client must act or its status changes by itself, seen at `now`: an
    /// attempt (R8; `now` itself when one is due already, however long ago it fell due), the
    /// end of initial grace (R10) or of validity (R7). Ends already past are not events (they
    /// changed the status when they passed). `None`: nothing happens until someone acts.
    pub fn next_event(&self, now: Timestamp) -> Option<Timestamp> {
        let attempt = if self.is_due(now) {
            Some(now)
        } else {
            self.next_attempt.filter(|&t| self.is_due(t))
        };
        // The ends `status_at` acts on, and only those.
        let end = match self.status {
            LicenseStatus::InitialGrace => self.grace_end,
            LicenseStatus::Licensed => self.validity_end,
            _ => None,
        };
        let ends = end.filter(|&t| t > now);
        attempt.into_iter().chain(ends).min()
    }

    /// [`License::next_event`] right after an attempt ended at `now`. An attempt that left the
    /// next one due already (it outlasted the interval it set, or stopped before any host and
    /// recorded nothing) is followed by the next one an activation interval later (R8): never
    /// at once, which would retry without pause.
    pub fn next_event_after_attempt(&self, now: Timestamp) -> Option<Timestamp> {
        if self.is_due(now) {
            Some(self.retry_at(now))
        } else {
            self.next_event(now)
        }
    }

    /// R25: the authority activated this installation with a MAK: licensed for good (no
    /// renewal), as long as the hardware stays within tolerance (R12).
    pub fn on_permanent_activation(&mut self, now: Timestamp, hardware: Option<&Hardware>) {
        self.status = LicenseStatus::Licensed;
        self.permanent = true;
        self.validity_end = None;
        self.next_attempt = None;
        self.last_success = Some(now);
        if let Some(hw) = hardware {
            self.hardware = Some(hw.clone());
        }
    }

    /// Applies the outcome of an attempt made at `now` from `hardware` (R2, R7, R8, R9, R12).
    pub fn on_attempt(
        &mut self,
        now: Timestamp,
        outcome: AttemptOutcome,
        hardware: Option<&Hardware>,
    ) {
        self.refresh(now);
        match outcome {
            AttemptOutcome::Counted {
                activated,
                intervals,
            } => {
                // R9: the host's intervals override the client's and persist; below a second
                // (no Tally host sends that) they would make a client retry without pause.
                self.intervals = Intervals {
                    activation_secs: intervals.activation_secs.max(MIN_INTERVAL_SECS),
                    renewal_secs: intervals.renewal_secs.max(MIN_INTERVAL_SECS),
                };
                if activated {
                    // R7: a success restarts the 180 days; R8: next renewal after the interval.
                    self.status = LicenseStatus::Licensed;
                    self.validity_end = Some(now.plus_days(VALIDITY_DAYS));
                    self.last_success = Some(now);
                    self.next_attempt = Some(Timestamp(
                        now.0
                            .saturating_add(i64::from(self.intervals.renewal_secs) * 1000),
                    ));
                    // R12: the hardware baseline is the one of the latest success.
                    if let Some(hw) = hardware {
                        self.hardware = Some(hw.clone());
                    }
                } else {
                    // R2: below threshold: stay in grace (or as we are) and retry.
                    self.next_attempt = Some(self.retry_at(now));
                }
            }
            AttemptOutcome::Failed => self.next_attempt = Some(self.retry_at(now)),
        }
    }

    fn retry_at(&self, now: Timestamp) -> Timestamp {
        // R8: a failed attempt is retried every activation interval.
        let secs = self.intervals.activation_secs.max(MIN_INTERVAL_SECS);
        Timestamp(now.0.saturating_add(i64::from(secs) * 1000))
    }

    /// R11: rearm resets the grace timer to 30 days, at most three times.
    pub fn rearm(&mut self, now: Timestamp) -> Result<(), LifecycleError> {
        if self.rearms_left == 0 {
            return Err(LifecycleError::NoRearmLeft);
        }
        self.rearms_left -= 1;
        self.reset_to_grace(now);
        Ok(())
    }

    /// R11: generalize (image preparation). The caller makes a new CMID in every case. The grace
    /// timer is reset when a rearm is left; with none left the operation still completes but
    /// leaves the timer unchanged and reports [`LifecycleError::NoRearmLeft`].
    pub fn generalize(&mut self, now: Timestamp) -> Result<(), LifecycleError> {
        // The image must activate anew wherever it is deployed.
        self.hardware = None;
        self.rearm(now)
    }

    fn reset_to_grace(&mut self, now: Timestamp) {
        if self.status != LicenseStatus::Unlicensed {
            self.status = LicenseStatus::InitialGrace;
            self.next_attempt = Some(now);
        }
        self.grace_end = Some(now.plus_days(GRACE_DAYS));
        self.validity_end = None;
    }

    /// R12: compares `current` with the hardware of the last success; past tolerance, the
    /// client is out of tolerance and must reactivate (an attempt is due at once).
    pub fn check_hardware(&mut self, current: &Hardware, now: Timestamp) -> bool {
        let Some(baseline) = &self.hardware else {
            return false;
        };
        if self.status_at(now) == LicenseStatus::Licensed && !baseline.within_tolerance(current) {
            self.status = LicenseStatus::OutOfTolerance;
            self.permanent = false;
            self.validity_end = None;
            self.next_attempt = Some(now);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::DAY_MS;

    const T0: Timestamp = Timestamp(1_800_000_000_000);

    fn host_intervals() -> Intervals {
        Intervals {
            activation_secs: 7200,
            renewal_secs: 7 * 86_400,
        }
    }

    fn counted(activated: bool) -> AttemptOutcome {
        counted_with(activated, host_intervals())
    }

    fn counted_with(activated: bool, intervals: Intervals) -> AttemptOutcome {
        AttemptOutcome::Counted {
            activated,
            intervals,
        }
    }

    fn installed() -> License {
        let mut l = License::default();
        l.install(T0);
        l
    }

    // R8: an attempt that fell due is due now, however long ago (an agent that woke late or
    // whose attempt outlasted the interval must not sleep until the next period end).
    #[test]
    fn r8_an_overdue_attempt_is_the_next_event() {
        let mut l = installed();
        l.on_attempt(T0, counted(true), None);
        let renewal = T0.plus_days(7);
        assert_eq!(l.next_event(T0), Some(renewal));
        assert_eq!(l.next_event(Timestamp(renewal.0 - 1)), Some(renewal));
        assert_eq!(l.next_event(renewal), Some(renewal));
        let late = Timestamp(renewal.0 + 5);
        assert_eq!(l.next_event(late), Some(late), "overdue: due now");
        // Right after an attempt that left it due, the next goes an activation interval later.
        assert_eq!(
            l.next_event_after_attempt(late),
            Some(Timestamp(late.0 + 7_200_000))
        );
        assert_eq!(l.next_event_after_attempt(T0), Some(renewal));
    }

    // R9: a host's zero interval is kept as one second, so no client retries without pause.
    #[test]
    fn r9_a_zero_interval_is_kept_as_one_second() {
        let mut l = installed();
        let zero = Intervals {
            activation_secs: 0,
            renewal_secs: 0,
        };
        l.on_attempt(T0, counted_with(true, zero), None);
        assert_eq!(l.next_attempt, Some(Timestamp(T0.0 + 1_000)));
        l.on_attempt(T0, AttemptOutcome::Failed, None);
        assert_eq!(l.next_attempt, Some(Timestamp(T0.0 + 1_000)));
    }

    // R7, R10: period ends are events while ahead; a MAK client (R25) and an unlicensed one
    // have no attempt to make.
    #[test]
    fn r7_r10_period_ends_are_events_only_while_ahead() {
        let l = License::default();
        assert_eq!(
            l.next_event(T0),
            None,
            "unlicensed: nothing happens by itself"
        );
        let mut l = installed();
        l.next_attempt = Some(T0.plus_days(40));
        assert_eq!(
            l.next_event(T0),
            Some(T0.plus_days(GRACE_DAYS)),
            "grace ends first"
        );
        assert_eq!(l.next_event(T0.plus_days(35)), Some(T0.plus_days(40)));
        let mut mak = installed();
        mak.on_permanent_activation(T0, None);
        assert_eq!(mak.next_event(T0.plus_days(1)), None, "R25: no renewal");
    }

    // R7: validity is 180 days from the last success; a renewal restarts it.
    #[test]
    fn r7_validity_is_180_days_from_last_success() {
        let mut l = installed();
        l.on_attempt(T0, counted(true), None);
        assert_eq!(l.validity_end, Some(T0.plus_days(180)));
        assert_eq!(l.status_at(T0.plus_days(179)), LicenseStatus::Licensed);
        assert_eq!(l.status_at(T0.plus_days(180)), LicenseStatus::Notification);
        l.on_attempt(T0.plus_days(7), counted(true), None);
        assert_eq!(l.validity_end, Some(T0.plus_days(187)));
        assert_eq!(l.status_at(T0.plus_days(185)), LicenseStatus::Licensed);
    }

    // R8: renew every renewal interval; after a failure retry every activation interval.
    #[test]
    fn r8_renewal_and_retry_timers() {
        let mut l = installed();
        assert!(l.is_due(T0));
        l.on_attempt(T0, counted(true), None);
        assert!(!l.is_due(T0.plus_days(6)));
        assert!(l.is_due(T0.plus_days(7)));
        let t = T0.plus_days(7);
        l.on_attempt(t, AttemptOutcome::Failed, None);
        assert_eq!(l.next_attempt, Some(t.plus_minutes(120)));
        assert_eq!(
            l.status_at(t),
            LicenseStatus::Licensed,
            "a failed renewal keeps the license"
        );
    }

    // R9: the host's intervals override local ones and persist (also for later failures).
    #[test]
    fn r9_host_intervals_override_and_persist() {
        let mut l = installed();
        let short = Intervals {
            activation_secs: 5,
            renewal_secs: 30,
        };
        l.on_attempt(
            T0,
            AttemptOutcome::Counted {
                activated: false,
                intervals: short,
            },
            None,
        );
        assert_eq!(l.intervals, short);
        assert_eq!(l.next_attempt, Some(Timestamp(T0.0 + 5_000)));
        l.on_attempt(T0, AttemptOutcome::Failed, None);
        assert_eq!(l.next_attempt, Some(Timestamp(T0.0 + 5_000)));
        l.on_attempt(
            T0,
            AttemptOutcome::Counted {
                activated: true,
                intervals: short,
            },
            None,
        );
        assert_eq!(l.next_attempt, Some(Timestamp(T0.0 + 30_000)));
    }

    // R10 and R2: below threshold, a client stays in grace and retries; 30 days → notification.
    #[test]
    fn r10_grace_runs_out_into_notification() {
        let mut l = installed();
        l.on_attempt(T0, counted(false), None);
        assert_eq!(l.status_at(T0.plus_days(29)), LicenseStatus::InitialGrace);
        assert_eq!(l.status_at(T0.plus_days(30)), LicenseStatus::Notification);
        // Activation from notification works.
        l.on_attempt(T0.plus_days(31), counted(true), None);
        assert_eq!(l.status_at(T0.plus_days(31)), LicenseStatus::Licensed);
    }

    // R11: rearm resets grace to 30 days, at most three times.
    #[test]
    fn r11_rearm_three_times_then_refuse() {
        let mut l = installed();
        for i in 1..=3 {
            let t = T0.plus_days(20 * i);
            l.rearm(t).expect("rearm left");
            assert_eq!(l.grace_end, Some(t.plus_days(30)));
        }
        assert_eq!(l.rearm(T0.plus_days(80)), Err(LifecycleError::NoRearmLeft));
        assert_eq!(l.grace_end, Some(T0.plus_days(60 + 30)));
    }

    // R11: generalize with no rearm left completes, leaves the timer, reports an error.
    #[test]
    fn r11_generalize_without_rearm_leaves_timer_and_errs() {
        let mut l = installed();
        l.rearms_left = 0;
        let before = l.grace_end;
        assert_eq!(
            l.generalize(T0.plus_days(5)),
            Err(LifecycleError::NoRearmLeft)
        );
        assert_eq!(l.grace_end, before);
        let mut l = installed();
        l.generalize(T0.plus_days(5)).expect("rearm left");
        assert_eq!(l.grace_end, Some(T0.plus_days(35)));
        assert_eq!(l.rearms_left, 2);
    }

    // R25 + R12: a MAK activation is permanent (no renewal) while the hardware is in tolerance.
    #[test]
    fn r25_permanent_activation_until_hardware_changes() {
        let base = Hardware::from_pairs([("disk", "SN-1")]);
        let mut l = installed();
        l.on_permanent_activation(T0, Some(&base));
        assert_eq!(l.status_at(T0.plus_days(2000)), LicenseStatus::Licensed);
        assert!(!l.is_due(T0.plus_days(2000)));
        assert!(l.check_hardware(&Hardware::from_pairs([("disk", "SN-2")]), T0.plus_days(10)));
        assert!(l.is_due(T0.plus_days(10)));
    }

    // R12: a change past tolerance requires reactivation; a small change does not.
    #[test]
    fn r12_hardware_change_past_tolerance_needs_reactivation() {
        let base = Hardware::from_pairs([
            ("disk", "SN-1"),
            ("cpu", "X"),
            ("memory", "16"),
            ("nic", "aa"),
        ]);
        let mut l = installed();
        l.on_attempt(T0, counted(true), Some(&base));
        let small = Hardware::from_pairs([
            ("disk", "SN-1"),
            ("cpu", "Y"),
            ("memory", "32"),
            ("nic", "aa"),
        ]);
        assert!(!l.check_hardware(&small, Timestamp(T0.0 + DAY_MS)));
        assert_eq!(
            l.status_at(Timestamp(T0.0 + DAY_MS)),
            LicenseStatus::Licensed
        );
        let new_disk = Hardware::from_pairs([
            ("disk", "SN-2"),
            ("cpu", "X"),
            ("memory", "16"),
            ("nic", "aa"),
        ]);
        assert!(l.check_hardware(&new_disk, Timestamp(T0.0 + DAY_MS)));
        assert_eq!(l.status, LicenseStatus::OutOfTolerance);
        assert!(l.is_due(Timestamp(T0.0 + DAY_MS)));
        l.on_attempt(Timestamp(T0.0 + DAY_MS), counted(true), Some(&new_disk));
        assert_eq!(l.status, LicenseStatus::Licensed);
        assert!(!l.check_hardware(&new_disk, Timestamp(T0.0 + 2 * DAY_MS)));
    }
}
