//! Trusted time for the client (X5), sans-I/O: the time rules (R7–R11) run on a time derived
//! from the hosts' signed `host_time`, not on the raw wall clock.
//!
//! The client keeps a [`TimeBase`]: the local reading at which the latest verified answer
//! arrived (its signed time is the *anchor*) and the highest local reading it has seen. Given
//! a local reading, [`TimeBase::read`] returns the trusted time:
//!
//! - with an anchor: the anchor plus the local time elapsed since it arrived, never before the
//!   anchor (a host signed that this moment had come);
//! - without one (no host ever answered): the local clock;
//! - a local clock more than the tolerance behind the highest reading seen is *behind*
//!   ([`Reading::behind_ms`]): nothing may be extended, the installation is treated as out of
//!   grace and an attempt is due at once, until the clock is right again or a host answers.
//!
//! A clock set *forward* moves trusted time forward (the vendor's side of the doubt: validity
//! runs out by it) until a host answers; the answer re-bases trusted time on the host's.
//!
//! Signed times come from evidence the caller verified ([`Evidence`]); this module never sees
//! a signature. [`Evidence::bound`] then caps what the state file claims: validity cannot end
//! later than 180 days after the latest signed activation, grace not later than 30 days after
//! the first signed answer since it started.

use serde::{Deserialize, Serialize};

use crate::lifecycle::{GRACE_DAYS, License, LicenseStatus, VALIDITY_DAYS};
use crate::time::Timestamp;

/// How far a clock may go back before the client calls it behind (X5): one hour, more than
/// any time-zone or NTP slip, less than any gain worth having. Vendors change it through
/// the catalog (`clock_tolerance_secs`) or the embedding API.
pub const DEFAULT_CLOCK_TOLERANCE_SECS: u32 = 3600;

/// What a client remembers about time between runs (in its state file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeBase {
    /// The client's steady local time at the last reading: it moves forward with the local
    /// clock and never back (a clock far below it was set back, and stays "behind" by as much
    /// until a host answers or the clock is set forward again).
    #[serde(default)]
    pub latest_local: Option<Timestamp>,
    /// The raw local reading that went with it (how far the clock moved since is added).
    #[serde(default)]
    pub last_reading: Option<Timestamp>,
    /// The steady local time when the latest verified answer arrived (its signed time is the
    /// anchor, kept as evidence beside this).
    #[serde(default)]
    pub anchor_local: Option<Timestamp>,
}

/// Signed times the caller verified from the evidence in the state (answers signed by hosts
/// certified by the trusted authority, for this installation's CMID).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The `host_time` of the latest verified answer (any result): the anchor.
    pub latest: Option<Timestamp>,
    /// The `host_time` of the latest answer that activated (R2): validity's start (R7).
    pub activation: Option<Timestamp>,
    /// The `host_time` of the first answer since grace last started (install, rearm): the
    /// installation or rearm happened before it (R10, R11).
    pub grace: Option<Timestamp>,
}

/// The trusted time at one local reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// Trusted time: what every time rule is evaluated at.
    pub now: Timestamp,
    /// The local clock is this many milliseconds behind the highest reading seen, more than
    /// the tolerance: `None` when it is not.
    pub behind_ms: Option<i64>,
}

impl TimeBase {
    /// The trusted time at local reading `local` (see the module docs).
    pub fn read(&self, evidence: &Evidence, local: Timestamp, tolerance_secs: u32) -> Reading {
        let tolerance = i64::from(tolerance_secs) * 1000;
        let steady = self.steady(local);
        let behind_ms = Some(steady.0.saturating_sub(local.0)).filter(|&b| b > tolerance);
        let now = match (evidence.latest, self.anchor_local) {
            (Some(signed), Some(at)) => Timestamp(
                signed
                    .0
                    .saturating_add(steady.0.saturating_sub(at.0))
                    .max(signed.0),
            ),
            // Signed evidence without the local reading it arrived at (an edited state): the
            // signed time is the floor, the local clock counts above it.
            (Some(signed), None) => Timestamp(local.0.max(signed.0)),
            (None, _) => local,
        };
        Reading { now, behind_ms }
    }

    /// The steady local time at reading `local`: the last one plus how far the clock moved
    /// forward since (nothing when it moved back), and never below the reading itself (a clock
    /// set forward is followed).
    fn steady(&self, local: Timestamp) -> Timestamp {
        match (self.latest_local, self.last_reading) {
            (Some(steady), Some(last)) => {
                let moved = local.0.saturating_sub(last.0).max(0);
                Timestamp(steady.0.saturating_add(moved).max(local.0))
            }
            (Some(steady), None) => Timestamp(steady.0.max(local.0)),
            (None, _) => local,
        }
    }

    /// Notes a local reading: the steady time moves on by what the clock moved forward.
    pub fn observe(&mut self, local: Timestamp) {
        self.latest_local = Some(self.steady(local));
        self.last_reading = Some(local);
    }

    /// A verified answer arrived at local reading `local`: it is the new anchor, and the local
    /// clock is vouched for from here (a clock that was behind is right again relative to it).
    pub fn on_signed(&mut self, local: Timestamp) {
        self.anchor_local = Some(local);
        self.latest_local = Some(local);
        self.last_reading = Some(local);
    }
}

impl Evidence {
    /// `license` as the evidence allows it (X5): validity ends at most 180 days after the
    /// latest signed activation, and a host-activated license without one is not licensed;
    /// grace ends at most 30 days after the first signed answer since it started. A MAK
    /// activation (R25) is permanent and carries its own signed claim: left as it is.
    pub fn bound(&self, license: &License) -> License {
        let mut l = license.clone();
        if l.permanent {
            return l;
        }
        match self.activation {
            Some(at) => {
                let cap = at.plus_days(VALIDITY_DAYS);
                l.validity_end = l.validity_end.map(|v| v.min(cap));
                if l.status == LicenseStatus::Licensed && l.validity_end.is_none() {
                    l.validity_end = Some(cap);
                }
            }
            None => {
                l.validity_end = None;
                if l.status == LicenseStatus::Licensed {
                    // Nothing signed says this installation ever activated: an attempt is due
                    // at once (a state written before the evidence existed reactivates).
                    l.status = LicenseStatus::Notification;
                    l.next_attempt = None;
                }
            }
        }
        if let Some(first) = self.grace {
            let cap = first.plus_days(GRACE_DAYS);
            l.grace_end = l.grace_end.map(|g| g.min(cap));
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Intervals;
    use crate::lifecycle::AttemptOutcome;
    use crate::time::DAY_MS;

    const REAL: Timestamp = Timestamp(1_800_000_000_000);
    const TOL: u32 = DEFAULT_CLOCK_TOLERANCE_SECS;

    fn activated_at(t: Timestamp) -> License {
        let mut l = License::default();
        l.install(t);
        l.on_attempt(
            t,
            AttemptOutcome::Counted {
                activated: true,
                intervals: Intervals::default(),
            },
            None,
        );
        l
    }

    // X5: no host ever answered: the local clock is the time; one set back past the tolerance
    // is behind.
    #[test]
    fn x5_without_evidence_the_local_clock_counts_and_a_set_back_is_seen() {
        let mut base = TimeBase::default();
        base.observe(REAL.plus_days(3650));
        let r = base.read(&Evidence::default(), REAL, TOL);
        assert_eq!(r.now, REAL);
        assert_eq!(r.behind_ms, Some(3650 * DAY_MS));
        let slip = Timestamp(REAL.plus_days(3650).0 - 1000);
        assert_eq!(base.read(&Evidence::default(), slip, TOL).behind_ms, None);
    }

    // X5: a clock set back and left running stays behind by as much (the set-back is not
    // forgotten once the clock passes the old readings) until a host answers.
    #[test]
    fn x5_a_clock_set_back_and_left_running_stays_behind() {
        let mut base = TimeBase::default();
        base.on_signed(REAL);
        let ev = Evidence {
            latest: Some(REAL),
            ..Evidence::default()
        };
        // Set back 144 days, observed, then 200 days of running.
        base.observe(REAL.plus_days(-144));
        let later = REAL.plus_days(-144 + 200);
        let r = base.read(&ev, later, TOL);
        assert_eq!(r.behind_ms, Some(144 * DAY_MS));
        assert_eq!(r.now, REAL.plus_days(200), "trusted time is not set back");
        base.on_signed(later);
        assert_eq!(
            base.read(&ev, later, TOL).behind_ms,
            None,
            "a host answered"
        );
    }

    // X5: with an anchor, trusted time is the host's time plus local time elapsed; a host's
    // answer vouches for the local clock again.
    #[test]
    fn x5_an_answer_rebases_trusted_time_on_the_host() {
        let mut base = TimeBase::default();
        let local = REAL.plus_days(200); // clock set forward
        base.observe(local);
        base.on_signed(local);
        let ev = Evidence {
            latest: Some(REAL),
            ..Evidence::default()
        };
        let r = base.read(&ev, local.plus_days(1), TOL);
        assert_eq!(r.now, REAL.plus_days(1));
        assert_eq!(r.behind_ms, None);
        // Clock set back after the answer: behind, and trusted time never before the anchor.
        let r = base.read(&ev, REAL.plus_days(-100), TOL);
        assert!(r.behind_ms.is_some());
        assert_eq!(r.now, REAL);
    }

    // X5 + R7: validity cannot end later than 180 days after the signed activation, whatever
    // the state file says; without a signed activation a host-activated client is not
    // licensed.
    #[test]
    fn x5_r7_validity_is_bounded_by_the_signed_activation() {
        let mut l = activated_at(REAL);
        l.validity_end = Some(REAL.plus_days(5000)); // edited state
        let ev = Evidence {
            latest: Some(REAL),
            activation: Some(REAL),
            grace: Some(REAL),
        };
        assert_eq!(ev.bound(&l).validity_end, Some(REAL.plus_days(180)));
        let unsigned = Evidence::default().bound(&l);
        assert_eq!(unsigned.status_at(REAL), LicenseStatus::Notification);
        assert_eq!(unsigned.validity_end, None);
        assert!(unsigned.is_due(REAL), "an attempt is due at once");
        let mut mak = activated_at(REAL);
        mak.on_permanent_activation(REAL, None);
        assert_eq!(
            Evidence::default().bound(&mak),
            mak,
            "R25: a MAK claim stands"
        );
    }

    // X5 + R10: grace ends at most 30 days after the first signed answer since it started.
    #[test]
    fn x5_r10_grace_is_bounded_by_the_first_signed_answer() {
        let mut l = License::default();
        l.install(REAL.plus_days(3650)); // installed with the clock ten years ahead
        let ev = Evidence {
            latest: Some(REAL),
            activation: None,
            grace: Some(REAL),
        };
        assert_eq!(ev.bound(&l).grace_end, Some(REAL.plus_days(30)));
        assert_eq!(
            Evidence::default().bound(&l).grace_end,
            Some(REAL.plus_days(3680)),
            "before any host answered, grace is what the local clock made"
        );
    }
}
