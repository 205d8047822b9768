//! A deterministic simulation on a virtual clock: the real host session and counting tables,
//! and 1000 clients running the real lifecycle state machine, for 400 simulated days. Mixed
//! editions in two pools, clients going offline for weeks, clones (some generalized later),
//! rearms, hardware changes. After every exchange, the rules R1–R12 are checked against an
//! independent model.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tally_core::catalog::{Catalog, Edition, EditionKind};
use tally_core::counting::CountTables;
use tally_core::hardware::Hardware;
use tally_core::host::{HostSession, Intervals, Outcome};
use tally_core::keys::KeyGroup;
use tally_core::lifecycle::{AttemptOutcome, License, LicenseStatus};
use tally_core::time::{Clock, DAY_MS, ManualClock, Timestamp};
use tally_core::trust::{
    HostIdentity, TrustAnchor, authority_id, generate_key, sha256, sign_certificate,
};
use tally_proto::{ActivationRequest, CertificateBody, MachineName, Message};
use uuid::Uuid;

const CLIENTS: usize = 1000;
const DAYS: i64 = 400;
const T0: Timestamp = Timestamp(1_800_000_000_000);
// The spec's numbers, stated here rather than imported, so a wrong constant in the code fails.
/// R7.
const VALIDITY_DAYS: i64 = 180;
/// R10, R11.
const GRACE_DAYS: i64 = 30;
/// R4.
const ENTRY_LIFETIME_MS: i64 = 30 * DAY_MS;
/// Non-default host intervals, so R9 (the host's override the client's) is visible.
const HOST: Intervals = Intervals {
    activation_secs: 90 * 60,
    renewal_secs: 5 * 86_400,
};

struct Client {
    cmid: Uuid,
    edition: Edition,
    license: License,
    hardware: Hardware,
    /// Days (relative to T0) between which the client cannot reach the host.
    offline: Option<(i64, i64)>,
    /// Day of a rearm, if this client rearms.
    rearm_day: Option<i64>,
    /// Day of a disk change (R12), if any.
    disk_change_day: Option<i64>,
    /// Day this clone is generalized, if it is a clone that will be.
    generalize_day: Option<i64>,
    /// Model: the last successful activation (R7).
    last_success: Option<Timestamp>,
    /// Model: end of grace (R10, R11).
    grace_end: Timestamp,
}

/// The independent model of the host's tables.
#[derive(Default)]
struct PoolModel {
    last_seen: HashMap<Uuid, Timestamp>,
    max_threshold: u16,
}

struct Sim {
    clock: ManualClock,
    session: HostSession,
    anchor: TrustAnchor,
    tables: Mutex<CountTables>,
    clients: Vec<Client>,
    pools: HashMap<Uuid, PoolModel>,
    exchanges: u64,
    activations: u64,
    verify_every: u64,
}

fn day(t: Timestamp) -> i64 {
    (t.0 - T0.0).div_euclid(DAY_MS)
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
        let session = HostSession::new(
            Arc::clone(&catalog),
            HostIdentity::new(host, cert).unwrap(),
            HOST,
        );
        let mut rng = StdRng::seed_from_u64(seed);
        let office_pool = catalog.pools()[1].id;
        let main: Vec<Edition> = catalog
            .editions()
            .iter()
            .filter(|e| e.pool != office_pool)
            .cloned()
            .collect();
        let office = catalog
            .editions()
            .iter()
            .find(|e| e.pool == office_pool)
            .cloned()
            .expect("office edition");
        let mut clients: Vec<Client> = Vec::with_capacity(CLIENTS);
        for i in 0..CLIENTS {
            // Installs arrive over the first 60 days.
            let start = T0.plus_days(rng.random_range(0..60));
            // ~5% are clones of an earlier install (same CMID, same edition); half of those
            // are generalized later (R11).
            let clone_of = (i > 10 && rng.random_bool(0.05)).then(|| rng.random_range(0..i));
            let (cmid, edition, generalize_day) = match clone_of {
                Some(j) => (
                    clients[j].cmid,
                    clients[j].edition.clone(),
                    rng.random_bool(0.5).then(|| rng.random_range(60..200)),
                ),
                // Every 25th install is in the small office pool (about 40 clients, below its
                // table size of 50, so expiries (R4) and the threshold (R2) show in its count);
                // the rest share the main pool, which saturates (R5).
                None if i % 25 == 0 => (Uuid::from_u128(rng.random()), office.clone(), None),
                None => (
                    Uuid::from_u128(rng.random()),
                    main[rng.random_range(0..main.len())].clone(),
                    None,
                ),
            };
            let mut license = License::default();
            license.install(start);
            let offline = rng.random_bool(0.1).then(|| {
                let from = rng.random_range(30..300);
                (from, from + rng.random_range(14..60))
            });
            clients.push(Client {
                cmid,
                edition,
                grace_end: start.plus_days(GRACE_DAYS),
                license,
                hardware: Hardware::from_pairs([
                    ("disk", &*format!("d{i}")),
                    ("cpu", "c"),
                    ("memory", "16"),
                ]),
                offline,
                rearm_day: rng.random_bool(0.05).then(|| rng.random_range(1..100)),
                disk_change_day: rng.random_bool(0.03).then(|| rng.random_range(100..350)),
                generalize_day,
                last_success: None,
            });
        }
        let clock = ManualClock::new(T0);
        Self {
            anchor: TrustAnchor::new(authority.verifying_key()),
            session,
            tables: Mutex::new(CountTables::default()),
            clients,
            pools: HashMap::new(),
            exchanges: 0,
            activations: 0,
            verify_every: 7,
            clock,
        }
    }

    /// One request from client `i` through the real session; returns (count, activated).
    fn exchange(&mut self, i: usize) -> (u32, bool) {
        let now = self.clock.now();
        let c = &self.clients[i];
        let request = ActivationRequest {
            nonce: (self.exchanges as u128).to_be_bytes(),
            cmid: c.cmid,
            pool: c.edition.pool,
            sku: c.edition.sku,
            threshold: c.edition.threshold,
            license_state: c.license.status_at(now).wire(),
            grace_remaining_minutes: c.license.minutes_left(now),
            client_time: now.millis(),
            ext: None,
            machine_name: MachineName::lossy(&format!("sim-{i}")),
        };
        let frame = Message::ActivationRequest(request.clone()).encode();
        let Outcome::Activation(mut pending) = self.session.handle(&frame, now) else {
            panic!("a valid request must be counted");
        };
        self.exchanges += 1;
        // What the store does inside its commit: count on the table as stored.
        let req = pending
            .changes
            .counting
            .expect("a valid request is counted");
        let count = self.tables.lock().unwrap().apply(&req).0;
        pending.changes.settle(count);
        let bytes = self.session.seal(&pending, count);
        let Ok(Message::ActivationResponse(resp)) = Message::decode(&bytes) else {
            panic!("response decodes")
        };
        // R16, sampled to keep the run in seconds (the chain is tested in full elsewhere).
        if self.exchanges.is_multiple_of(self.verify_every) {
            let host = self
                .anchor
                .verify_certificate(self.session.identity().certificate(), now)
                .unwrap();
            host.verify_response(&resp, &sha256(&frame), &request.nonce, &c.edition)
                .unwrap();
        }
        // R6: every request produces its registry record.
        assert_eq!(pending.changes.registry.cmid, c.cmid, "R6");
        let activated = resp.result.is_success() && resp.count >= u32::from(c.edition.threshold);
        assert_eq!(
            pending.changes.registry.activated, activated,
            "R6 registry records the outcome"
        );
        assert_eq!(
            (resp.activation_interval_secs, resp.renewal_interval_secs),
            (HOST.activation_secs, HOST.renewal_secs),
            "R9"
        );

        // The model: R3 one table per pool across kinds, R4 30-day life, R5 capacity.
        let pool = self.pools.entry(c.edition.pool).or_default();
        pool.last_seen.insert(c.cmid, now);
        pool.max_threshold = pool.max_threshold.max(c.edition.threshold);
        let capacity = 2 * u32::from(pool.max_threshold);
        let live = pool
            .last_seen
            .values()
            .filter(|t| t.0 + ENTRY_LIFETIME_MS > now.0)
            .count() as u32;
        // R2 + R4 + R5: the count is the live CMIDs of the pool, requester included, saturating
        // at the table size (the least recently seen give way).
        assert_eq!(
            resp.count,
            live.min(capacity),
            "R2/R4/R5 count at day {} for pool {}",
            day(now),
            c.edition.pool
        );
        let table = self.tables.lock().unwrap();
        let t = table.pool(c.edition.pool).unwrap();
        assert_eq!(
            t.capacity(),
            capacity,
            "R5 capacity = 2 x highest threshold requested"
        );
        assert!(t.contains(c.cmid, now), "R5 the requester never gives way");
        drop(table);
        (resp.count, activated)
    }

    fn check_client(&self, i: usize) {
        let now = self.clock.now();
        let c = &self.clients[i];
        let l = &c.license;
        // R1: thresholds by kind.
        let expected = match c.edition.kind {
            EditionKind::Client => 25,
            EditionKind::Server => 5,
        };
        assert_eq!(c.edition.threshold, expected, "R1");
        let status = l.status_at(now);
        if status == LicenseStatus::OutOfTolerance {
            return; // R12: reactivation pending; checked where it happens.
        }
        match c.last_success {
            // R7: validity is 180 days from the last success.
            Some(s) => {
                assert_eq!(
                    l.validity_end,
                    Some(s.plus_days(VALIDITY_DAYS)),
                    "R7 client {i}"
                );
                let want = if now < s.plus_days(VALIDITY_DAYS) {
                    LicenseStatus::Licensed
                } else {
                    LicenseStatus::Notification
                };
                if l.status != LicenseStatus::InitialGrace {
                    assert_eq!(status, want, "R7 status of client {i} at day {}", day(now));
                }
            }
            // R10: never activated: grace for 30 days, then notification.
            None => {
                let want = if now < c.grace_end {
                    LicenseStatus::InitialGrace
                } else {
                    LicenseStatus::Notification
                };
                assert_eq!(status, want, "R10 client {i} at day {}", day(now));
            }
        }
        // R11: at most three rearms.
        assert!(l.rearms_left <= 3, "R11");
    }

    /// Runs client `i`'s due attempt at the current time; returns when it is next due.
    fn step(&mut self, i: usize) -> Timestamp {
        let now = self.clock.now();
        let d = day(now);
        // R11: a rearm resets grace to 30 days.
        if self.clients[i].rearm_day.is_some_and(|r| d >= r) {
            let c = &mut self.clients[i];
            c.rearm_day = None;
            if c.license.rearm(now).is_ok() {
                c.grace_end = now.plus_days(GRACE_DAYS);
                c.last_success = None;
            }
        }
        // R11: a generalized clone gets its own CMID (and counts on its own from now on).
        if self.clients[i].generalize_day.is_some_and(|g| d >= g) {
            let c = &mut self.clients[i];
            c.generalize_day = None;
            c.cmid = Uuid::from_u128(0xC10_0000_0000 + i as u128);
            if c.license.generalize(now).is_ok() {
                c.grace_end = now.plus_days(GRACE_DAYS);
                c.last_success = None;
            }
        }
        // R12: a new disk needs reactivation.
        if self.clients[i].disk_change_day.is_some_and(|x| d >= x) {
            let c = &mut self.clients[i];
            c.disk_change_day = None;
            c.hardware = Hardware::from_pairs([
                ("disk", &*format!("new-{i}")),
                ("cpu", "c"),
                ("memory", "16"),
            ]);
            let was_licensed = c.license.status_at(now) == LicenseStatus::Licensed;
            let out = c.license.check_hardware(&c.hardware.clone(), now);
            assert_eq!(
                out, was_licensed,
                "R12: a licensed client with a new disk is out of tolerance"
            );
            if out {
                assert!(c.license.is_due(now), "R12: reactivation is due at once");
                c.last_success = None;
                c.grace_end = now; // it is not in grace: it must reactivate
            }
        }
        self.check_client(i);
        if !self.clients[i].license.is_due(now) {
            return self.clients[i].license.next_attempt.unwrap_or(now);
        }
        let offline = self.clients[i]
            .offline
            .is_some_and(|(a, b)| d >= a && d < b);
        let before = self.clients[i].license.clone();
        if offline {
            let c = &mut self.clients[i];
            c.license.on_attempt(now, AttemptOutcome::Failed, None);
            // R8: a failed attempt is retried every activation interval.
            assert_eq!(
                c.license.next_attempt,
                Some(Timestamp(
                    now.0 + i64::from(before.intervals.activation_secs) * 1000
                )),
                "R8 retry"
            );
        } else {
            let (_, activated) = self.exchange(i);
            let c = &mut self.clients[i];
            let hw = c.hardware.clone();
            c.license.on_attempt(
                now,
                AttemptOutcome::Counted {
                    activated,
                    intervals: HOST,
                },
                Some(&hw),
            );
            // R9: the host's intervals now rule.
            assert_eq!(c.license.intervals, HOST, "R9");
            if activated {
                self.activations += 1;
                c.last_success = Some(now);
                // R2: activated; R8: renew after the renewal interval.
                assert_eq!(c.license.status_at(now), LicenseStatus::Licensed, "R2");
                assert_eq!(
                    c.license.next_attempt,
                    Some(Timestamp(now.0 + i64::from(HOST.renewal_secs) * 1000)),
                    "R8 renewal"
                );
            } else {
                // R2: below threshold: not activated, retry after the activation interval.
                assert_eq!(
                    c.license.status_at(now),
                    before.status_at(now),
                    "R2: below threshold changes no status"
                );
                assert_eq!(
                    c.license.next_attempt,
                    Some(Timestamp(now.0 + i64::from(HOST.activation_secs) * 1000)),
                    "R8 retry"
                );
            }
        }
        self.check_client(i);
        self.clients[i].license.next_attempt.unwrap_or(now)
    }

    fn run(&mut self) {
        let end = T0.plus_days(DAYS);
        let mut queue: BinaryHeap<Reverse<(Timestamp, usize)>> = BinaryHeap::new();
        for (i, c) in self.clients.iter().enumerate() {
            queue.push(Reverse((c.license.next_attempt.unwrap_or(T0), i)));
        }
        // A daily wake for every client too, so expiries (R7, R10) and scheduled events are
        // checked even while nothing is due.
        let mut next_daily = T0;
        while let Some(Reverse((t, i))) = queue.pop() {
            if t >= end {
                break;
            }
            while next_daily <= t {
                self.clock.set(next_daily);
                for j in 0..self.clients.len() {
                    self.check_client(j);
                }
                next_daily = next_daily.plus_days(1);
            }
            self.clock.set(t);
            let next = self.step(i);
            // Scheduled events (rearm, disk, generalize) are picked up at the next attempt or
            // within a day, whichever comes first.
            queue.push(Reverse((
                next.min(t.plus_days(1)).max(Timestamp(t.0 + 1)),
                i,
            )));
        }
    }
}

#[test]
fn four_hundred_days_of_a_thousand_clients_keep_every_rule() {
    let mut sim = Sim::new(0x7A11_2026);
    sim.run();
    // The run exercised what it claims to.
    assert!(sim.exchanges > 50_000, "exchanges: {}", sim.exchanges);
    assert!(sim.activations > 40_000, "activations: {}", sim.activations);
    let clones = {
        let mut n: BTreeMap<Uuid, usize> = BTreeMap::new();
        for c in &sim.clients {
            *n.entry(c.cmid).or_default() += 1;
        }
        n.values().filter(|v| **v > 1).count()
    };
    assert!(clones > 0, "some clones were never generalized");
    // The office pool stayed below its table size, so its counts were exact (R4, not R5).
    let office = Catalog::demo().pools()[1].id;
    let live = sim
        .tables
        .lock()
        .unwrap()
        .pool(office)
        .map(|t| t.count_at(sim.clock.now()));
    assert!(
        live.is_some_and(|n| (25..50).contains(&n)),
        "office pool count {live:?}"
    );
    eprintln!(
        "simulation: {} exchanges, {} activations, {clones} unsplit clones",
        sim.exchanges, sim.activations
    );
    // Both pools reached their table size at some point: client editions asked (R5: 50).
    for pool in Catalog::demo().pools() {
        let cap = sim
            .tables
            .lock()
            .unwrap()
            .pool(pool.id)
            .map(|t| t.capacity());
        assert_eq!(cap, Some(50), "pool {}", pool.name);
    }
}
