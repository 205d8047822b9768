//! The test bodies, written once against `dyn Store`: counting (R2–R5), events (R27), failed
//! commits (X3), durability, trusted time (X5) and clones (X6) here; the registry and what reads
//! it (R6, refusals, the cap) in `registry`; the event log's cap in `event_cap`. The backends
//! call them all through this module.

use std::sync::Arc;

use tally_core::counting::CountTables;
use tally_core::host::{Changes, CountRequest, RegistryUpdate};
use tally_core::time::{DAY_MS, Timestamp};
use tally_proto::{LicenseState, ResultCode};
use tally_store::{Event, EventQuery, PoolCount, Store};
use uuid::Uuid;

mod event_cap;
mod registry;

pub use event_cap::the_event_log_is_capped_besides_retention;
pub use registry::{
    r6_a_period_is_read_in_keyset_pages, r6_registry_pages_search_and_entries,
    r6_search_is_a_name_prefix_in_any_case, r6_the_census_counts_each_machine_in_one_state,
    refusals_are_aggregated_not_registered, registry_cap_and_retention,
    the_bench_pool_is_counted_but_never_listed_or_reported,
};

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
