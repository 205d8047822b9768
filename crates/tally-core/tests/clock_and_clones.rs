//! X5 and X6 in simulation: the real host session, counting tables and clone judge, and
//! clients running the real lifecycle on trusted time (`tally_core::trusted`), for 400 days.
//! Some clients' clocks are set back, forward and back again; some installations are copied
//! (same CMID, same saved sequence, same hardware). After every step an independent model
//! checks that no clock change ever licenses a client past 180 days of real time after its
//! last real success (R7), or keeps it in grace past 30 real days after the host first answered
//! (R10), and that the host's count is that of the live installations, copies counted apart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tally_core::catalog::{Catalog, Edition, EditionKind};
use tally_core::clones::{self, Seen};
use tally_core::counting::CountTables;
use tally_core::host::{HostSession, Intervals, Outcome};
use tally_core::keys::KeyGroup;
use tally_core::lifecycle::{AttemptOutcome, License, LicenseStatus};
use tally_core::time::{DAY_MS, Timestamp};
use tally_core::trust::{HostIdentity, authority_id, generate_key, sign_certificate};
use tally_core::trusted::{Evidence, TimeBase};
use tally_proto::{ActivationRequest, CertificateBody, MachineName, Message, RequestExt};
use uuid::Uuid;

const INSTALLS: usize = 300;
const DAYS: i64 = 400;
const T0: Timestamp = Timestamp(1_800_000_000_000);
const TOLERANCE_SECS: u32 = 3600;
/// The spec's numbers (R7, R10, R4), stated here so a wrong constant in the code fails.
const VALIDITY_MS: i64 = 180 * DAY_MS;
const GRACE_MS: i64 = 30 * DAY_MS;
const ENTRY_MS: i64 = 30 * DAY_MS;
const HOST: Intervals = Intervals {
    activation_secs: 6 * 3600,
    renewal_secs: 5 * 86_400,
};

/// One installation: what its state file holds, and its clock.
#[derive(Clone)]
struct Install {
    cmid: Uuid,
    license: License,
    base: TimeBase,
    evidence: Evidence,
    sequence: u32,
    hardware: [u8; 8],
    /// (from day, offset in days) steps of the local clock, in day order.
    clock: Vec<(i64, i64)>,
    /// Model: the real time of the last success, and of the first answer since install.
    last_success: Option<Timestamp>,
    first_answer: Option<Timestamp>,
}

impl Install {
    fn offset(&self, day: i64) -> i64 {
        self.clock
            .iter()
            .rev()
            .find(|(from, _)| day >= *from)
            .map_or(0, |(_, o)| *o)
    }
}

struct Sim {
    session: HostSession,
    tables: CountTables,
    registry: HashMap<Uuid, Seen>,
    edition: Edition,
    installs: Vec<Install>,
    /// Model: the real time each CMID was last counted.
    live: HashMap<Uuid, Timestamp>,
    clones_seen: u32,
    behind_seen: u32,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let authority = generate_key();
        let host = generate_key();
        let cert = sign_certificate(
            &authority,
            CertificateBody {
                host_key: host.verifying_key().to_bytes(),
                key_group: KeyGroup::ServerC.rank(),
                generation: 1,
                key_serial: 1,
                not_before: 0,
                not_after: i64::MAX / 1000,
                authority_id: authority_id(&authority.verifying_key()),
            },
        );
        let catalog = Arc::new(Catalog::demo());
        let edition = catalog
            .editions()
            .iter()
            .find(|e| e.kind == EditionKind::Server)
            .cloned()
            .unwrap();
        let session = HostSession::new(catalog, HostIdentity::new(host, cert).unwrap(), HOST);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut installs = Vec::with_capacity(INSTALLS);
        for i in 0..INSTALLS {
            // A fifth of the machines have their clock set back, forward, back again, with no
            // host reachable meanwhile (what a user stretching a license would do).
            let clock = if rng.random_bool(0.2) {
                let a = rng.random_range(20..100);
                let b = a + rng.random_range(5..250);
                let c = b + rng.random_range(5..60);
                vec![
                    (a, -rng.random_range(2..200)),
                    (b, rng.random_range(2..400)),
                    (c, 0),
                ]
            } else {
                Vec::new()
            };
            installs.push(Install {
                cmid: Uuid::from_u128(0x1000 + i as u128),
                license: License::default(),
                base: TimeBase::default(),
                evidence: Evidence::default(),
                sequence: 0,
                hardware: (i as u64).to_be_bytes(),
                clock,
                last_success: None,
                first_answer: None,
            });
        }
        Self {
            session,
            tables: CountTables::default(),
            registry: HashMap::new(),
            edition,
            installs,
            live: HashMap::new(),
            clones_seen: 0,
            behind_seen: 0,
        }
    }

    /// One request of install `i` at real time `real`; the host judges its sequence as a
    /// store does (X6, clones counted apart). Returns (count, activated), or `None` for a clone.
    fn exchange(&mut self, i: usize, real: Timestamp) -> Option<(u32, bool)> {
        let c = &mut self.installs[i];
        c.sequence += 1; // saved before it is sent
        let ext = RequestExt {
            sequence: c.sequence,
            hardware_digest: c.hardware,
        };
        let request = ActivationRequest {
            nonce: [1; 16],
            cmid: c.cmid,
            pool: self.edition.pool,
            sku: self.edition.sku,
            threshold: self.edition.threshold,
            license_state: c.license.status.wire(),
            grace_remaining_minutes: 0,
            client_time: real.millis(),
            ext: Some(ext),
            machine_name: MachineName::lossy("sim"),
        };
        let frame = Message::ActivationRequest(request).encode();
        let Outcome::Activation(mut pending) = self.session.handle(&frame, real) else {
            panic!("counted");
        };
        let seen = self.registry.get(&c.cmid);
        let verdict = clones::judge(seen, &ext, real);
        if verdict.is_clone() {
            self.clones_seen += 1;
            return None;
        }
        if verdict.stores() {
            self.registry.insert(
                c.cmid,
                Seen {
                    sequence: Some(ext.sequence),
                    hardware_digest: Some(ext.hardware_digest),
                    last_seen: real,
                },
            );
        }
        let req = pending.changes.counting.expect("counted");
        let count = self.tables.apply(&req).0;
        let counted = pending.changes.settle(count);
        self.live.insert(c.cmid, real);
        let live = self
            .live
            .values()
            .filter(|t| t.0 + ENTRY_MS > real.0)
            .count() as u32;
        assert_eq!(
            count,
            live.min(10),
            "R2/R4/R5 with copies counted apart (X6)"
        );
        Some((count, counted.activated))
    }

    /// Install `i` at real time `real`: acts on trusted time; returns when to look next.
    fn step(&mut self, i: usize, real: Timestamp) {
        let day = (real.0 - T0.0) / DAY_MS;
        let local = real.plus_days(self.installs[i].offset(day));
        let c = &mut self.installs[i];
        c.base.observe(local);
        if c.license.status == LicenseStatus::Unlicensed {
            c.license
                .install(c.base.read(&c.evidence, local, TOLERANCE_SECS).now);
        }
        let reading = c.base.read(&c.evidence, local, TOLERANCE_SECS);
        let mut view = c.evidence.bound(&c.license);
        let behind = reading.behind_ms.is_some();
        if behind {
            self.behind_seen += 1;
        }
        let status = if behind {
            LicenseStatus::Notification
        } else {
            view.status_at(reading.now)
        };
        // The model (X5): never licensed past 180 real days after the last real success, never
        // in grace past 30 real days after the first answer (the tolerance aside).
        let slack = i64::from(TOLERANCE_SECS) * 1000;
        if status == LicenseStatus::Licensed {
            let s = c.last_success.expect("licensed only after a success");
            assert!(
                real.0 < s.0 + VALIDITY_MS + slack,
                "R7/X5 install {i} day {day}: clock {:?}, real {real}, local {local}, trusted {}, last success {s}, validity end {:?}, base {:?}, evidence {:?}",
                c.clock,
                reading.now,
                view.validity_end,
                c.base,
                c.evidence
            );
        }
        if status == LicenseStatus::InitialGrace
            && let Some(first) = c.first_answer
        {
            assert!(
                real.0 < first.0 + GRACE_MS + slack,
                "R10/X5 install {i} day {day}"
            );
        }
        if behind {
            view.next_attempt = None;
        }
        if !view.is_due(reading.now) {
            return;
        }
        let jumping = c.clock.first().is_some_and(|(a, _)| day >= *a)
            && c.clock.last().is_some_and(|(end, _)| day < *end);
        if jumping {
            // No host answers while the clock is off: a failed attempt (R8).
            c.license
                .on_attempt(reading.now, AttemptOutcome::Failed, None);
            return;
        }
        match self.exchange(i, real) {
            None => {
                // X6: the host saw this CMID's number again: take a new CMID, ask again.
                let c = &mut self.installs[i];
                c.cmid = Uuid::from_u128(0xC0_0000 + i as u128 * 1000 + u128::from(c.sequence));
                c.evidence.activation = None;
                let (_, activated) = self.exchange(i, real).expect("a new CMID is no clone");
                self.answered(i, real, local, activated);
            }
            Some((_, activated)) => self.answered(i, real, local, activated),
        }
    }

    fn answered(&mut self, i: usize, real: Timestamp, local: Timestamp, activated: bool) {
        let c = &mut self.installs[i];
        // The host's signed time is the real time.
        c.base.on_signed(local);
        c.evidence.latest = Some(real);
        c.evidence.grace.get_or_insert(real);
        c.first_answer.get_or_insert(real);
        if activated {
            c.evidence.activation = Some(real);
            c.last_success = Some(real);
        }
        c.license.on_attempt(
            real,
            AttemptOutcome::Counted {
                activated,
                intervals: HOST,
            },
            None,
        );
        c.license = c.evidence.bound(&c.license);
    }
}

#[test]
fn x5_x6_clock_jumps_and_copies_never_extend_a_license_or_hide_a_machine() {
    let mut sim = Sim::new(0x5EED_2026);
    let mut rng = StdRng::seed_from_u64(7);
    for step in 0..DAYS * 4 {
        let real = Timestamp(T0.0 + step * DAY_MS / 4);
        // Copies: now and then an installation is copied, state and all (a disk image).
        if step % 40 == 20 && sim.installs.len() < INSTALLS + 15 {
            let j = rng.random_range(0..sim.installs.len());
            let copy = sim.installs[j].clone();
            sim.installs.push(copy);
        }
        for i in 0..sim.installs.len() {
            sim.step(i, real);
        }
    }
    let mut cmids: Vec<Uuid> = sim.installs.iter().map(|c| c.cmid).collect();
    cmids.sort_unstable();
    let before = cmids.len();
    cmids.dedup();
    assert_eq!(
        cmids.len(),
        before,
        "every copy ended with a CMID of its own (X6)"
    );
    assert!(sim.clones_seen >= 10, "clones seen: {}", sim.clones_seen);
    assert!(sim.behind_seen > 0, "clocks set back were seen");
    eprintln!(
        "clock and clones: {} installs, {} clones split, {} readings behind",
        sim.installs.len(),
        sim.clones_seen,
        sim.behind_seen
    );
}
