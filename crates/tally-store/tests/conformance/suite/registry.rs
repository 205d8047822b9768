//! The registry's conformance tests (R6): pages, search, period reads and the census; the bench
//! pool kept out of every listing; refusals aggregated, not registered; the registry's cap and
//! retention.

use std::sync::Arc;

use tally_core::time::{DAY_MS, Timestamp};
use tally_proto::ResultCode;
use tally_store::{CensusCutoffs, CensusRow, EventQuery, RegistryPage, RegistrySort};
use uuid::Uuid;

use super::{Backend, POOL, T0, count_of, request};

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
