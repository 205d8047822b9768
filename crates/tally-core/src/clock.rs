//! Host clock sanity (X5), sans-I/O: whether a host may count, expire and prune on its clock.
//!
//! A host's wall clock can be wrong: set ahead by years, set back, stepped while the host runs.
//! Nothing here reads a clock; the host gathers [`Evidence`] (its clock, the database's clock in a
//! fleet, the times its clients report, the last time a check trusted the clock, the newest time
//! in its store) and [`assess`] says what contradicts the clock. The rules built on it:
//!
//! - **Retention deletes only on a clock nothing contradicts** ([`may_prune`]): a clock ahead of
//!   the last trusted time by more than [`MAX_UNWITNESSED_GAP_MS`] with no client or database to
//!   vouch for it, a clock behind that time, or a clock that moved unlike the monotonic clock is
//!   doubted, and the pass is held back.
//! - **No stamp lives in the future** ([`pull_back`]): a table entry (R4) or registry time beyond
//!   `now` + [`CLOCK_TOLERANCE_MS`] was written by a clock that ran ahead; it is treated as seen
//!   `now`, so it lapses within 30 days of the clock in force instead of never.
//! - **The trusted mark moves only forward and only on a trusted clock**, so a clock that ran
//!   ahead for a while cannot make its own readings the reference.

use serde::Serialize;

use crate::time::{DAY_MS, MINUTE_MS, Timestamp};

/// How far two clocks may disagree before one of them is doubted: 5 minutes. NTP keeps hosts
/// within milliseconds; a few minutes covers a machine without NTP for weeks, and requests in
/// flight while a batch commits.
pub const CLOCK_TOLERANCE_MS: i64 = 5 * MINUTE_MS;

/// How far past the last trusted time a clock may be found without anything to vouch for it: two
/// days. The host checks its clock every few minutes while it runs, so a larger gap is a host that
/// was stopped that long or a clock that jumped; until clients or the database vouch for the
/// time, retention waits.
pub const MAX_UNWITNESSED_GAP_MS: i64 = 2 * DAY_MS;

/// Distinct clients whose reported times must agree before their median counts as evidence.
pub const MIN_CLIENT_WITNESSES: usize = 3;

/// Client samples kept (the most recent request of each client, up to this many clients).
pub const CLIENT_SAMPLES: usize = 15;

/// `at`, or `now` when `at` lies beyond `now` + [`CLOCK_TOLERANCE_MS`] (X5: a stamp from a clock
/// that ran ahead is pulled back, never left to live forever).
pub fn pull_back(at: Timestamp, now: Timestamp) -> Timestamp {
    if at.0 > now.0.saturating_add(CLOCK_TOLERANCE_MS) {
        now
    } else {
        at
    }
}

/// What a clock is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// The fleet database's clock.
    Database,
    /// The median time the host's recent clients reported (`client_time`).
    Clients,
    /// The newest time in the store (used while no check has trusted the clock yet).
    StoredData,
    /// The last time a check trusted the clock (kept in the store).
    TrustedMark,
    /// The host's monotonic clock since its last check: the wall clock was stepped.
    Monotonic,
}

impl Reference {
    /// The reference's name in events, metrics labels and status.
    pub fn name(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Clients => "clients",
            Self::StoredData => "stored_data",
            Self::TrustedMark => "trusted_mark",
            Self::Monotonic => "monotonic",
        }
    }
}

/// One contradiction: the clock is `skew_ms` ahead of `reference` (behind when negative).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What contradicts the clock.
    pub reference: Reference,
    /// The clock minus the reference, in milliseconds.
    pub skew_ms: i64,
}

/// What a host knows about the time besides the clock being judged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The clock being judged.
    pub now: Timestamp,
    /// The last time a check trusted the clock (see the module docs), if any.
    pub trusted_mark: Option<Timestamp>,
    /// The newest time in the store (table entries, registry, events), if any.
    pub newest_stored: Option<Timestamp>,
    /// The database's clock (fleet mode), read at about the same moment as `now`.
    pub database_now: Option<Timestamp>,
    /// The clock minus the median time recent clients reported ([`ClientTimes::median_offset`]).
    pub clients_offset_ms: Option<i64>,
    /// Wall-clock time minus monotonic time elapsed since this process's last check.
    pub drift_ms: Option<i64>,
}

/// Everything that contradicts `e.now`; empty when the clock can be trusted (X5).
pub fn assess(e: &Evidence) -> Vec<Finding> {
    let mut found = Vec::new();
    let beyond = |skew: i64| skew.abs() > CLOCK_TOLERANCE_MS;
    let mut vouched = false;
    if let Some(db) = e.database_now {
        let skew = e.now.0.saturating_sub(db.0);
        if beyond(skew) {
            found.push(Finding {
                reference: Reference::Database,
                skew_ms: skew,
            });
        } else {
            vouched = true;
        }
    }
    if let Some(skew) = e.clients_offset_ms {
        if beyond(skew) {
            found.push(Finding {
                reference: Reference::Clients,
                skew_ms: skew,
            });
        } else {
            vouched = true;
        }
    }
    if let Some(skew) = e.drift_ms.filter(|d| beyond(*d)) {
        found.push(Finding {
            reference: Reference::Monotonic,
            skew_ms: skew,
        });
    }
    // The trusted mark, once there is one, is the reference: the store's newest times may have
    // been written by a clock that ran ahead (that is what pulling back repairs), the mark never.
    let (reference, base) = match (e.trusted_mark, e.newest_stored) {
        (Some(mark), _) => (Reference::TrustedMark, mark),
        (None, Some(newest)) => (Reference::StoredData, newest),
        (None, None) => return found,
    };
    let skew = e.now.0.saturating_sub(base.0);
    // Behind the reference: the clock went back (or the stored data came from a clock ahead of
    // this one, which without a mark cannot be told apart). Witnesses that agree with the clock
    // outrank the mark: then the mark was set by a clock that ran ahead.
    let behind = skew < -CLOCK_TOLERANCE_MS && !vouched;
    // Far ahead with nothing to vouch: a jump, or a host stopped for that long.
    let jumped = skew > MAX_UNWITNESSED_GAP_MS && !vouched;
    if behind || jumped {
        found.push(Finding {
            reference,
            skew_ms: skew,
        });
    }
    found
}

/// Whether retention may delete on the clock these findings are about (X5: never on a clock it
/// has reason to doubt).
pub fn may_prune(findings: &[Finding]) -> bool {
    findings.is_empty()
}

/// The latest `client_time` reports of distinct clients, as offsets from the host's clock: a
/// witness of the real time that one client with a wrong clock cannot sway (the median of at
/// least [`MIN_CLIENT_WITNESSES`] clients).
#[derive(Clone, Debug, Default)]
pub struct ClientTimes {
    /// (client, host clock minus client time), most recent last.
    samples: Vec<([u8; 16], i64)>,
}

impl ClientTimes {
    /// Notes a request from `client` that reported `client_time` when the host's clock said
    /// `now`. Clients that send no time (0) are not witnesses.
    pub fn note(&mut self, client: [u8; 16], client_time: i64, now: Timestamp) {
        if client_time <= 0 {
            return;
        }
        self.samples.retain(|(c, _)| *c != client);
        if self.samples.len() >= CLIENT_SAMPLES {
            self.samples.remove(0);
        }
        self.samples
            .push((client, now.0.saturating_sub(client_time)));
    }

    /// The median offset (host clock minus client time), once enough clients reported.
    pub fn median_offset(&self) -> Option<i64> {
        if self.samples.len() < MIN_CLIENT_WITNESSES {
            return None;
        }
        let mut offsets: Vec<i64> = self.samples.iter().map(|(_, o)| *o).collect();
        offsets.sort_unstable();
        offsets.get(offsets.len() / 2).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timestamp = Timestamp(1_800_000_000_000);
    const YEAR: i64 = 365 * DAY_MS;

    fn at(now: Timestamp) -> Evidence {
        Evidence {
            now,
            ..Evidence::default()
        }
    }

    // X5: a clock that agrees with its last trusted time, a day later, may prune.
    #[test]
    fn x5_a_clock_that_moved_as_expected_is_trusted() {
        let e = Evidence {
            trusted_mark: Some(T),
            newest_stored: Some(T),
            ..at(T.plus_days(1))
        };
        assert!(assess(&e).is_empty());
        assert!(may_prune(&assess(&e)));
        // A fresh database has nothing to contradict the clock.
        assert!(assess(&at(T)).is_empty());
    }

    // X5: a host restarted ten years ahead holds retention back (the measured failure deleted
    // every registry row and event in its start-up pass).
    #[test]
    fn x5_a_jump_ahead_of_the_trusted_mark_holds_retention_back() {
        let e = Evidence {
            trusted_mark: Some(T),
            ..at(Timestamp(T.0 + 10 * YEAR))
        };
        let found = assess(&e);
        assert_eq!(
            found,
            vec![Finding {
                reference: Reference::TrustedMark,
                skew_ms: 10 * YEAR
            }]
        );
        assert!(!may_prune(&found));
        // Before any mark, the newest stored time is the reference.
        let e = Evidence {
            newest_stored: Some(T),
            ..at(Timestamp(T.0 + 10 * YEAR))
        };
        assert_eq!(assess(&e)[0].reference, Reference::StoredData);
    }

    // X5: data written by a clock that ran ahead does not make the ahead clock the reference:
    // with a mark, the stored data's future times are ignored (they are pulled back instead).
    #[test]
    fn x5_the_mark_outranks_data_written_by_a_clock_that_ran_ahead() {
        let e = Evidence {
            trusted_mark: Some(T),
            newest_stored: Some(Timestamp(T.0 + 10 * YEAR)),
            ..at(T.plus_days(1))
        };
        assert!(assess(&e).is_empty());
        // The same host still ten years ahead, its data too: still doubted.
        let e = Evidence {
            trusted_mark: Some(T),
            newest_stored: Some(Timestamp(T.0 + 10 * YEAR)),
            ..at(Timestamp(T.0 + 10 * YEAR + DAY_MS))
        };
        assert!(!may_prune(&assess(&e)));
    }

    // X5: a clock set back behind the trusted mark (or, without a mark, behind the stored data)
    // is doubted; within the tolerance it is not.
    #[test]
    fn x5_a_clock_behind_the_reference_is_doubted() {
        let e = Evidence {
            trusted_mark: Some(T),
            ..at(T.plus_days(-100))
        };
        assert_eq!(assess(&e)[0].skew_ms, -100 * DAY_MS);
        let e = Evidence {
            newest_stored: Some(T),
            ..at(T.plus_days(-1))
        };
        assert_eq!(assess(&e)[0].reference, Reference::StoredData);
        let e = Evidence {
            trusted_mark: Some(T),
            ..at(Timestamp(T.0 - CLOCK_TOLERANCE_MS))
        };
        assert!(assess(&e).is_empty());
    }

    // X5: a long stop is told from a jump by witnesses: clients or the database that agree with
    // the clock vouch for the gap; clients that disagree are a finding of their own.
    #[test]
    fn x5_witnesses_vouch_for_a_gap_or_contradict_the_clock() {
        let later = T.plus_days(40);
        let gap = Evidence {
            trusted_mark: Some(T),
            ..at(later)
        };
        assert!(!may_prune(&assess(&gap)));
        let clients_agree = Evidence {
            clients_offset_ms: Some(1_000),
            ..gap
        };
        assert!(assess(&clients_agree).is_empty());
        let database_agrees = Evidence {
            database_now: Some(later),
            ..gap
        };
        assert!(assess(&database_agrees).is_empty());
        let clients_disagree = Evidence {
            clients_offset_ms: Some(YEAR),
            ..at(T)
        };
        assert_eq!(
            assess(&clients_disagree),
            vec![Finding {
                reference: Reference::Clients,
                skew_ms: YEAR
            }]
        );
        let behind_but_vouched = Evidence {
            trusted_mark: Some(Timestamp(T.0 + YEAR)),
            clients_offset_ms: Some(0),
            ..at(T)
        };
        assert!(assess(&behind_but_vouched).is_empty());
        let database_disagrees = Evidence {
            database_now: Some(T),
            ..at(Timestamp(T.0 + YEAR))
        };
        assert_eq!(
            assess(&database_disagrees)[0].reference,
            Reference::Database
        );
    }

    // X5: a wall clock stepped while the host runs disagrees with the monotonic clock.
    #[test]
    fn x5_a_step_while_running_is_seen_against_the_monotonic_clock() {
        let e = Evidence {
            drift_ms: Some(DAY_MS),
            ..at(T)
        };
        assert_eq!(assess(&e)[0].reference, Reference::Monotonic);
        let e = Evidence {
            drift_ms: Some(2_000),
            ..at(T)
        };
        assert!(assess(&e).is_empty());
    }

    // X5, R4: stamps beyond the tolerance are pulled back to now, others kept.
    #[test]
    fn x5_future_stamps_are_pulled_back() {
        assert_eq!(pull_back(Timestamp(T.0 + YEAR), T), T);
        let near = Timestamp(T.0 + CLOCK_TOLERANCE_MS);
        assert_eq!(pull_back(near, T), near);
        assert_eq!(pull_back(T.plus_days(-3), T), T.plus_days(-3));
    }

    // X5: the clients' median needs three distinct clients; one client's wrong clock does not
    // move it, and a client counts once however often it asks.
    #[test]
    fn x5_the_clients_median_needs_three_and_resists_one_liar() {
        let mut c = ClientTimes::default();
        c.note([1; 16], T.0, T);
        c.note([1; 16], T.0, T);
        c.note([2; 16], T.0 - 10 * YEAR, T);
        assert_eq!(c.median_offset(), None);
        c.note([3; 16], T.0 + 1_000, T);
        assert_eq!(c.median_offset(), Some(0));
        c.note([4; 16], 0, T); // no time: not a witness
        assert_eq!(c.samples.len(), 3);
        for n in 10..40u8 {
            c.note([n; 16], T.0 - YEAR, T);
        }
        assert_eq!(c.samples.len(), CLIENT_SAMPLES);
        assert_eq!(c.median_offset(), Some(YEAR));
    }
}
