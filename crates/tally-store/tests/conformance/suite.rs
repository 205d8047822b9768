//! The test bodies, written once against `dyn Store`.

use std::sync::Arc;

use tally_core::counting::CountTables;
use tally_core::host::{Changes, CountRequest, RegistryUpdate};
use tally_core::time::{DAY_MS, Timestamp};
use tally_proto::{LicenseState, ResultCode};
use tally_store::{
    CensusCutoffs, CensusRow, Event, EventQuery, PoolCount, RegistryPage, RegistrySort, Store,
};
use uuid::Uuid;

pub use crate::event_cap::the_event_log_is_capped_besides_retention;

/// A backend under test: a fresh, empty database per test.
pub trait Backend {
    /// The store under test.
    fn store(&self) -> Arc<dyn Store>;
    /// A second store on the same database (a restart, or another host of a fleet).
    async fn reopen(&self) -> Arc<dyn Store>;
    /// Makes the database refuse writes (or accept them again).
    async fn fail_writes(&self, on: bool);
    /// A store on the same (empty) database with other limits, used alone by the test.
    async fn with_options(&self, options: tally_store::StoreOptions) -> Arc<dyn Store>;
}

pub const POOL: Uuid = Uuid::from_u128(1);
const T0: i64 = 1_800_000_000_000;

/// A counted request from client `n` at `T0 + ms`, for an edition with `threshold`.
pub fn request(n: u128, ms: i64, threshold: u16) -> Changes {
    let cmid = Uuid::from_u128(100 + n);
    Changes {
        counting: Some(CountRequest {
            pool: POOL,
            cmid,
            threshold,
            at: Timestamp(T0 + ms),
        }),
        registry: RegistryUpdate {
            cmid,
            machine_name: format!("pc-{n}"),
            sku: Uuid::from_u128(9),
            pool: POOL,
            license_state: LicenseState::InitialGrace,
            seen_at: Timestamp(T0 + ms),
            result: ResultCode::SUCCESS,
            count: 0,
            activated: false,
            peer: Some("127.0.0.1:9".into()),
            installation: None,
        },
        clone_policy: Default::default(),
    }
}

async fn count_of(store: &dyn Store, ms: i64) -> Vec<PoolCount> {
    store
        .pool_counts(Timestamp(T0 + ms))
        .await
        .expect("pool counts")
}

// R2, R5, X1: concurrent commits are counted one after another, as a single host would in commit
// order: every count from 1 to the capacity is given exactly once, then the table is full.
pub async fn r2_r5_concurrent_commits_count_in_commit_order(b: &impl Backend) {
    let store = b.store();
    let waits: Vec<_> = (0..14)
        .map(|n| {
            let s = Arc::clone(&store);
            tokio::spawn(async move { s.commit(request(n, n as i64, 5)).await })
        })
        .collect();
    let mut counts = Vec::new();
    for w in waits {
        let c = w.await.expect("join").expect("commit");
        assert_eq!(c.activated, c.count >= 5, "activated iff count reaches 5");
        counts.push(c.count);
    }
    counts.sort_unstable();
    assert_eq!(counts, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10, 10]);
    assert_eq!(
        count_of(&*store, 100).await,
        [PoolCount {
            pool: POOL,
            count: 10,
            capacity: 10
        }]
    );
    assert_eq!(store.registry_len().await.expect("len"), 14);
}

// R4: a renewal refreshes the entry without raising the count; an entry not renewed for 30 days
// no longer counts.
pub async fn r4_renewals_do_not_double_count_and_entries_lapse(b: &impl Backend) {
    let store = b.store();
    for n in 1..=3 {
        assert_eq!(
            store.commit(request(n, 0, 25)).await.expect("commit").count,
            n as u32
        );
    }
    let renewed = store
        .commit(request(1, 20 * DAY_MS, 25))
        .await
        .expect("renew");
    assert_eq!(renewed.count, 3, "R4 renewal is not counted twice");
    // Day 31: clients 2 and 3 lapsed, client 1 renewed on day 20; client 4 is new.
    let c = store
        .commit(request(4, 31 * DAY_MS, 25))
        .await
        .expect("commit");
    assert_eq!(c.count, 2);
    assert_eq!(count_of(&*store, 31 * DAY_MS).await[0].count, 2);
    let entry = store
        .registry_entry(Uuid::from_u128(101))
        .await
        .expect("entry")
        .expect("present");
    assert_eq!(entry.requests, 2);
    assert_eq!(entry.first_seen, Timestamp(T0));
}

// R5: the table holds twice the highest threshold that has used the pool, and never shrinks.
pub async fn r5_capacity_follows_the_highest_threshold_and_never_shrinks(b: &impl Backend) {
    let store = b.store();
    store.commit(request(1, 0, 25)).await.expect("commit");
    store.commit(request(2, 1, 5)).await.expect("commit");
    assert_eq!(count_of(&*store, 2).await[0].capacity, 50);
    for n in 3..=60 {
        store.commit(request(n, n as i64, 5)).await.expect("commit");
    }
    let pools = count_of(&*store, 100).await;
    assert_eq!((pools[0].count, pools[0].capacity), (50, 50));
    // The requester never gives way; the least recently seen do.
    let tables = CountTables::from_snapshots(store.load_tables().await.expect("load"));
    let table = tables.pool(POOL).expect("pool");
    assert!(table.contains(Uuid::from_u128(160), Timestamp(T0 + 100)));
    assert!(!table.contains(Uuid::from_u128(101), Timestamp(T0 + 100)));
}

// R6: every client in the registry, with pages, search and counts.
pub async fn r6_registry_pages_search_and_entries(b: &impl Backend) {
    let store = b.store();
    for n in 0..14 {
        store.commit(request(n, n as i64, 5)).await.expect("commit");
    }
    let page = store
        .registry(RegistryPage {
            offset: 0,
            limit: 3,
            ..RegistryPage::default()
        })
        .await
        .expect("page");
    let names = |v: &[tally_store::RegistryEntry]| {
        v.iter().map(|e| e.machine_name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(&page), ["pc-13", "pc-12", "pc-11"]);
    let found = store
        .registry(RegistryPage {
            limit: 10,
            search: Some("PC-1".into()),
            sort: RegistrySort::Machine,
            ..RegistryPage::default()
        })
        .await
        .expect("search");
    assert_eq!(names(&found), ["pc-1", "pc-10", "pc-11", "pc-12", "pc-13"]);
    assert_eq!(
        store
            .registry_count(Some("pc-1".into()))
            .await
            .expect("count"),
        5
    );
    let first = store
        .registry(RegistryPage {
            limit: 2,
            offset: 1,
            sort: RegistrySort::FirstSeen,
            ..RegistryPage::default()
        })
        .await
        .expect("first seen");
    assert_eq!(names(&first), ["pc-1", "pc-2"]);
    let e = store
        .registry_entry(Uuid::from_u128(113))
        .await
        .expect("entry")
        .expect("present");
    assert!(e.activated);
    assert_eq!((e.last_count, e.last_result), (10, ResultCode::SUCCESS.0));
    assert_eq!(
        store
            .registry_entry(Uuid::from_u128(7))
            .await
            .expect("none"),
        None
    );
}

// R6 at scale (issue 14): a search is a case-insensitive prefix of the machine name, answered
// from an index; the count agrees with the page.
pub async fn r6_search_is_a_name_prefix_in_any_case(b: &impl Backend) {
    let store = b.store();
    for (n, name) in ["Lab-PC-7", "lab-pc-70", "LAB-server", "xlab-pc-7", "lab"]
        .into_iter()
        .enumerate()
    {
        let mut c = request(n as u128, n as i64, 5);
        c.registry.machine_name = name.to_owned();
        store.commit(c).await.expect("commit");
    }
    let search = |text: &str| {
        let store = Arc::clone(&store);
        let text = text.to_owned();
        async move {
            let page = store
                .registry(RegistryPage {
                    limit: 10,
                    search: Some(text.clone()),
                    sort: RegistrySort::Machine,
                    ..RegistryPage::default()
                })
                .await
                .expect("search");
            let count = store.registry_count(Some(text)).await.expect("count");
            let names: Vec<String> = page.into_iter().map(|e| e.machine_name).collect();
            assert_eq!(count, names.len() as u64, "{names:?}");
            names
        }
    };
    assert_eq!(search("lab-pc-7").await, ["Lab-PC-7", "lab-pc-70"]);
    assert_eq!(
        search("LAB").await.len(),
        4,
        "not xlab-pc-7: a prefix, not a substring"
    );
    assert_eq!(search("lab-s").await, ["LAB-server"]);
    assert!(search("pc").await.is_empty());
    assert_eq!(store.registry_count(None).await.expect("all"), 5);
    assert_eq!(
        store
            .registry_count(Some(String::new()))
            .await
            .expect("empty"),
        5
    );
}

// R6 at scale (issue 14): a period is read in CMID-ordered keyset pages, so a compliance report
// is one pass over the registry; clients outside the period are left out.
pub async fn r6_a_period_is_read_in_keyset_pages(b: &impl Backend) {
    let store = b.store();
    for n in 0..7 {
        store
            .commit(request(n, n as i64 * 1000, 5))
            .await
            .expect("commit");
    }
    // Clients first seen at 1 s … 5 s and last seen at or after 1 s: n = 1..=5.
    let (from, to) = (Timestamp(T0 + 1000), Timestamp(T0 + 5001));
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .registry_in_period(from, to, after, 2)
            .await
            .expect("period page");
        assert!(page.len() <= 2);
        after = page.last().map(|e| e.cmid);
        seen.extend(page.iter().map(|e| e.cmid));
        if page.len() < 2 {
            break;
        }
    }
    let want: Vec<Uuid> = (1..=5).map(|n| Uuid::from_u128(100 + n)).collect();
    assert_eq!(seen, want);
}

// R6, R7, R10: the census sorts every machine into exactly one state by the cutoffs (strict
// bounds: a time equal to a cutoff is on the recent side), per edition and pool, in one query.
pub async fn r6_the_census_counts_each_machine_in_one_state(b: &impl Backend) {
    let store = b.store();
    let now = 400 * DAY_MS;
    let cut = CensusCutoffs {
        validity_before: Timestamp(T0 + now - 180 * DAY_MS),
        renewal_before: Timestamp(T0 + now - 7 * DAY_MS),
        grace_before: Timestamp(T0 + now - 30 * DAY_MS),
    };
    let seen = |n: u128, ms: i64, activated: bool, sku: u128| {
        let mut c = request(n, ms, if activated { 1 } else { 1000 });
        c.registry.activated = activated;
        c.registry.sku = Uuid::from_u128(sku);
        c
    };
    // Machine n: its first request, then its last; first and last seen differ, so a backend
    // that read one for the other would count differently.
    let grace = now - 29 * DAY_MS;
    let machines = [
        (1, true, 0, now - DAY_MS),                      // activated
        (2, true, 0, now - 7 * DAY_MS),                  // on the bound: activated
        (3, true, 0, now - 7 * DAY_MS - 1),              // overdue
        (4, true, 0, now - 180 * DAY_MS),                // on the bound: overdue
        (5, true, 0, now - 100 * DAY_MS),                // overdue
        (6, true, 0, now - 180 * DAY_MS - 1),            // expired
        (7, true, 0, now - 200 * DAY_MS),                // expired
        (8, true, 0, now - 181 * DAY_MS),                // expired
        (9, false, now - 30 * DAY_MS - 1, now - DAY_MS), // grace ran out: expired, however recent
        (10, false, grace, now - DAY_MS),                // in grace
        (11, false, grace, now - 2 * DAY_MS),            // in grace
        (12, false, now - 30 * DAY_MS, now - DAY_MS),    // on the bound: in grace
        (13, false, grace, grace),                       // in grace
        (14, false, now - DAY_MS, now - DAY_MS),         // in grace
    ];
    let mut rows = vec![];
    for (n, activated, first, last) in machines {
        rows.push(seen(n, first, activated, 9));
        if last != first {
            rows.push(seen(n, last, activated, 9));
        }
    }
    rows.push(seen(20, now - DAY_MS, true, 10)); // another edition
    let mut other_pool = seen(21, now - DAY_MS, true, 9);
    other_pool.registry.pool = Uuid::from_u128(2);
    if let Some(c) = other_pool.counting.as_mut() {
        c.pool = Uuid::from_u128(2);
    }
    rows.push(other_pool);
    assert_eq!(store.registry_census(cut).await.expect("empty"), []);
    for c in rows {
        store.commit(c).await.expect("commit");
    }
    let census = store.registry_census(cut).await.expect("census");
    let want = [
        CensusRow {
            sku: Uuid::from_u128(9),
            pool: POOL,
            machines: 14,
            activated: 2,
            renewal_overdue: 3,
            expired: 4,
            in_grace: 5,
        },
        CensusRow {
            sku: Uuid::from_u128(9),
            pool: Uuid::from_u128(2),
            machines: 1,
            activated: 1,
            ..CensusRow::default()
        },
        CensusRow {
            sku: Uuid::from_u128(10),
            pool: POOL,
            machines: 1,
            activated: 1,
            ..CensusRow::default()
        },
    ];
    assert_eq!(census, want);
}

// Issue 14: the bench edition's pool (tally_core::bench) is counted like any pool, so a bench
// measures the real cost, but no listing, count, pool summary or period read shows it.
pub async fn the_bench_pool_is_counted_but_never_listed_or_reported(b: &impl Backend) {
    let store = b.store();
    store.commit(request(1, 0, 5)).await.expect("real");
    let mut counts = Vec::new();
    for n in 0..3 {
        let mut c = request(50 + n, n as i64, tally_core::bench::THRESHOLD);
        if let Some(req) = c.counting.as_mut() {
            req.pool = tally_core::bench::POOL;
        }
        c.registry.pool = tally_core::bench::POOL;
        c.registry.machine_name = format!("bench-{n}");
        counts.push(store.commit(c).await.expect("bench").count);
    }
    assert_eq!(counts, [1, 2, 3], "counted in a table of its own");
    assert_eq!(store.registry_len().await.expect("len"), 1);
    assert_eq!(store.registry_count(None).await.expect("count"), 1);
    assert_eq!(
        store
            .registry_count(Some("bench".into()))
            .await
            .expect("search"),
        0
    );
    let page = store
        .registry(RegistryPage {
            limit: 10,
            ..RegistryPage::default()
        })
        .await
        .expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(
        store
            .registry_in_period(Timestamp(0), Timestamp(i64::MAX), None, 100)
            .await
            .expect("period")
            .len(),
        1
    );
    let pools: Vec<Uuid> = count_of(&*store, 10).await.iter().map(|p| p.pool).collect();
    assert_eq!(pools, [POOL], "the bench pool is in no summary");
    let everyone = CensusCutoffs {
        validity_before: Timestamp(i64::MIN),
        renewal_before: Timestamp(i64::MIN),
        grace_before: Timestamp(i64::MIN),
    };
    let census = store.registry_census(everyone).await.expect("census");
    assert_eq!(
        census
            .iter()
            .map(|r| (r.pool, r.machines))
            .collect::<Vec<_>>(),
        [(POOL, 1)],
        "the bench pool is in no census"
    );
    // Retention prunes the bench machines with the others.
    let pruned = store
        .prune_registry(Timestamp(T0 + 1_000_000))
        .await
        .expect("prune");
    assert_eq!(pruned, 4);
}

// Issue 12: refusals are counted per day, edition and result, never one row per machine: a
// flood of requests for unknown editions from random machines adds one row, and nothing to the
// registry or the event table; the edition of an unknown request is not kept.
pub async fn refusals_are_aggregated_not_registered(b: &impl Backend) {
    let store = b.store();
    store.commit(request(1, 0, 5)).await.expect("commit");
    let waits: Vec<_> = (0..40u128)
        .map(|n| {
            let s = Arc::clone(&store);
            let mut refused = request(1000 + n, 10 + n as i64, 5);
            refused.counting = None;
            refused.registry.sku = Uuid::from_u128(0xdead_0000 + n); // attacker-chosen
            refused.registry.result = ResultCode::UNKNOWN_EDITION;
            tokio::spawn(async move { s.commit(refused).await })
        })
        .collect();
    for w in waits {
        let c = w.await.expect("join").expect("commit");
        assert_eq!((c.count, c.activated), (0, false));
    }
    let mut not_covered = request(2, 60, 5);
    not_covered.counting = None;
    not_covered.registry.result = ResultCode::EDITION_NOT_COVERED;
    store.commit(not_covered).await.expect("commit");
    assert_eq!(
        count_of(&*store, 100).await[0].count,
        1,
        "refusals count nothing"
    );
    assert_eq!(
        store.registry_len().await.expect("len"),
        1,
        "no registry row per refusal"
    );
    let events = store
        .events(EventQuery {
            limit: 1000,
            ..EventQuery::default()
        })
        .await
        .expect("events");
    assert_eq!(events.len(), 1, "no event row per refusal");
    let refusals = store.refusals(Timestamp(T0)).await.expect("refusals");
    let day = T0.div_euclid(DAY_MS);
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert_eq!(
        (
            refusals[0].day,
            refusals[0].sku,
            refusals[0].result,
            refusals[0].requests
        ),
        (day, Uuid::nil(), ResultCode::UNKNOWN_EDITION.0, 40)
    );
    assert_eq!(refusals[0].last_at, Timestamp(T0 + 49));
    assert_eq!(
        (refusals[1].sku, refusals[1].result, refusals[1].requests),
        (Uuid::from_u128(9), ResultCode::EDITION_NOT_COVERED.0, 1)
    );
}

// Issue 12: the registry has a cap (new machines are still counted and answered, not registered;
// event 1005 once) and a retention that makes room again.
pub async fn registry_cap_and_retention(b: &impl Backend) {
    let store = b
        .with_options(tally_store::StoreOptions {
            registry_cap: 3,
            ..Default::default()
        })
        .await;
    for n in 1..=5 {
        let c = store.commit(request(n, n as i64, 5)).await.expect("commit");
        assert_eq!(
            c.count, n as u32,
            "counting does not depend on the registry"
        );
    }
    store.commit(request(1, 10, 5)).await.expect("renewal");
    assert_eq!(store.registry_len().await.expect("len"), 3);
    assert!(store.registry_full());
    let renewed = store
        .registry_entry(Uuid::from_u128(101))
        .await
        .expect("entry")
        .expect("registered");
    assert_eq!(
        renewed.requests, 2,
        "registered machines are still updated at the cap"
    );
    let full_events = store
        .events(EventQuery {
            event_id: Some(tally_store::EVENT_REGISTRY_FULL),
            limit: 10,
            ..EventQuery::default()
        })
        .await
        .expect("events");
    assert_eq!(full_events.len(), 1, "event 1005 once, not per request");
    // Retention: machines not seen since T0 + 5 go; machine 1 (seen at +10) stays.
    assert_eq!(
        store
            .prune_registry(Timestamp(T0 + 5))
            .await
            .expect("prune"),
        2
    );
    assert!(!store.registry_full());
    store.commit(request(6, 20, 5)).await.expect("commit");
    assert_eq!(store.registry_len().await.expect("len"), 2);
}

// R27: every committed activation has its 12290 event; events can be queried and pruned.
pub async fn r27_events_are_recorded_queried_and_pruned(b: &impl Backend) {
    let store = b.store();
    for n in 0..3 {
        store
            .commit(request(n, 1000 + n as i64, 5))
            .await
            .expect("commit");
    }
    let own = Event {
        at: Timestamp(T0 + 5000),
        event_id: 1000,
        level: "info".into(),
        message: "host started".into(),
        data: serde_json::json!({}),
    };
    store.record_events(vec![own]).await.expect("record");
    let all = store
        .events(EventQuery {
            limit: 100,
            ..EventQuery::default()
        })
        .await
        .expect("events");
    assert_eq!(
        all.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        [1000, 12290, 12290, 12290]
    );
    assert_eq!(all[1].data["machine"], "pc-2");
    assert_eq!(all[1].data["count"], 3);
    assert_eq!(all[1].data["peer"], "127.0.0.1:9");
    let q = EventQuery {
        since: Some(Timestamp(T0 + 1001)),
        event_id: Some(12290),
        limit: 100,
    };
    assert_eq!(store.events(q).await.expect("events").len(), 2);
    assert_eq!(
        store
            .prune_events(Timestamp(T0 + 1002))
            .await
            .expect("prune"),
        2
    );
    let left = store
        .events(EventQuery {
            limit: 100,
            ..EventQuery::default()
        })
        .await
        .expect("events");
    assert_eq!(left.len(), 2);
}

// X3 and issue 12: a commit that fails counts nothing, tells the caller, and leaves no phantom
// count behind; once writes work again the next client gets the count of machines stored.
pub async fn x3_a_failed_commit_counts_nothing(b: &impl Backend) {
    let store = b.store();
    for n in 1..=3 {
        store.commit(request(n, n as i64, 5)).await.expect("commit");
    }
    b.fail_writes(true).await;
    for n in 4..=7 {
        store
            .commit(request(n, n as i64, 5))
            .await
            .expect_err("the database refuses writes");
    }
    assert_eq!(count_of(&*store, 10).await[0].count, 3, "no phantom counts");
    b.fail_writes(false).await;
    let c = store.commit(request(8, 8, 5)).await.expect("commit");
    assert_eq!(
        (c.count, c.activated),
        (4, false),
        "4 machines stored, below 5"
    );
    assert_eq!(store.registry_len().await.expect("len"), 4);
    let events = store
        .events(EventQuery {
            event_id: Some(12290),
            limit: 100,
            ..EventQuery::default()
        })
        .await
        .expect("events");
    assert_eq!(events.len(), 4, "no event for what was not stored");
}

// Durability: a second store on the same database sees exactly what was committed.
pub async fn durable_across_reopen(b: &impl Backend) {
    let store = b.store();
    for n in 0..12 {
        store.commit(request(n, n as i64, 5)).await.expect("commit");
    }
    let again = b.reopen().await;
    assert_eq!(count_of(&*again, 100).await, count_of(&*store, 100).await);
    let c = again.commit(request(12, 50, 5)).await.expect("commit");
    assert_eq!(c.count, 10, "the reopened store counts on the stored table");
}

// X5: the store keeps the last trusted time (never moved back, durable) and, when the clock is
// trusted, pulls table entries and registry times stamped in the future back to it, so machines
// seen while a clock ran ten years ahead lapse 30 days later (R4).
pub async fn x5_trusting_the_clock_pulls_future_stamps_back(b: &impl Backend) {
    let store = b.store();
    let empty = store.clock_evidence().await.expect("evidence");
    assert_eq!((empty.trusted_mark, empty.newest_stored), (None, None));
    let ten_years = 3650 * DAY_MS;
    for n in 1..=3 {
        store
            .commit(request(n, ten_years, 5))
            .await
            .expect("commit");
    }
    store.commit(request(4, 0, 5)).await.expect("commit");
    let e = store.clock_evidence().await.expect("evidence");
    assert_eq!(e.newest_stored, Some(Timestamp(T0 + ten_years)));
    let pulled = store
        .trust_clock(Timestamp(T0 + 1000))
        .await
        .expect("trust");
    // Counting machine 4 already pulled the table's entries back (tally_core::counting); the
    // registry rows are pulled back here.
    assert_eq!(pulled, 3, "three registry rows");
    let e = store.clock_evidence().await.expect("evidence");
    assert_eq!(e.trusted_mark, Some(Timestamp(T0 + 1000)));
    let entry = store
        .registry_entry(Uuid::from_u128(101))
        .await
        .expect("entry")
        .expect("present");
    assert_eq!(
        (entry.first_seen, entry.last_seen),
        (Timestamp(T0 + 1000), Timestamp(T0 + 1000))
    );
    assert_eq!(count_of(&*store, 1000).await[0].count, 4);
    // 30 days after the trusted time, the pulled-back machines have lapsed (R4).
    assert_eq!(count_of(&*store, 1000 + 30 * DAY_MS).await[0].count, 0);
    let c = store
        .commit(request(5, 1000 + 30 * DAY_MS, 5))
        .await
        .expect("commit");
    assert_eq!(c.count, 1, "only the machine seen within 30 days");
    // The mark never moves back, and it is durable.
    store.trust_clock(Timestamp(T0)).await.expect("trust");
    let again = b.reopen().await;
    let e = again.clock_evidence().await.expect("evidence");
    assert_eq!(e.trusted_mark, Some(Timestamp(T0 + 1000)));
}

/// `request(n, ms, 5)` as a version-2 request with the installation's `sequence` from hardware
/// `hw`, under `policy`.
fn installation(
    n: u128,
    ms: i64,
    sequence: u32,
    hw: u8,
    policy: tally_core::clones::ClonePolicy,
) -> Changes {
    let mut c = request(n, ms, 5);
    c.registry.installation = Some(tally_proto::RequestExt {
        sequence,
        hardware_digest: [hw; 8],
    });
    c.clone_policy = policy;
    c
}

// X6: one installation's numbers grow; a number seen again is another installation presenting
// the CMID: counted apart (nothing counted under it, `clone`) or once, and counted in the row.
pub async fn x6_a_repeated_sequence_is_a_clone(b: &impl Backend) {
    use tally_core::clones::ClonePolicy::{Apart, Once};
    let store = b.store();
    let commit = |c: Changes| {
        let store = Arc::clone(&store);
        async move { store.commit(c).await.expect("commit") }
    };
    let first = commit(installation(1, 0, 1, 1, Apart)).await;
    assert_eq!((first.count, first.clone), (1, false));
    let next = commit(installation(1, 1000, 65, 1, Apart)).await;
    assert_eq!(
        (next.count, next.clone),
        (1, false),
        "a higher number: the same one"
    );
    let copy = commit(installation(1, 2000, 65, 1, Apart)).await;
    assert_eq!(
        (copy.count, copy.clone),
        (0, true),
        "the same number again: a clone, counted apart (nothing under this CMID)"
    );
    let late = commit(installation(1, 3000, 60, 1, Apart)).await;
    assert_eq!(
        (late.count, late.clone),
        (1, false),
        "a lower number from the same hardware within two minutes: one installation's attempts"
    );
    let once = commit(installation(1, 4000, 65, 2, Once)).await;
    assert_eq!(
        (once.count, once.clone),
        (1, true),
        "clones = once: counted once"
    );
    let entry = store
        .registry_entry(Uuid::from_u128(101))
        .await
        .expect("entry")
        .expect("present");
    assert_eq!(entry.clones, 2, "{entry:?}");
    // The copy, with a new CMID, counts apart.
    let apart = commit(installation(2, 5000, 1, 1, Apart)).await;
    assert_eq!((apart.count, apart.clone), (2, false));
}
