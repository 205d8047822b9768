use std::collections::HashMap;

use proptest::prelude::*;
use tally_core::counting::{CountTables, PoolSnapshot};
use tally_core::host::{Changes, CountRequest, RegistryUpdate};
use tally_core::time::{DAY_MS, Timestamp};
use tally_proto::{LicenseState, RequestExt, ResultCode};
use uuid::Uuid;

use super::{Judge, count};
use crate::group_commit::{Answer, Work};

const T0: i64 = 1_800_000_000_000;

fn request(pool: u128, client: u128, threshold: u16, at: i64) -> Changes {
    let (pool, cmid) = (Uuid::from_u128(pool), Uuid::from_u128(100 + client));
    Changes {
        counting: Some(CountRequest {
            pool,
            cmid,
            threshold,
            at: Timestamp(at),
        }),
        registry: RegistryUpdate {
            cmid,
            machine_name: format!("pc-{client}"),
            sku: Uuid::from_u128(9),
            pool,
            license_state: LicenseState::InitialGrace,
            seen_at: Timestamp(at),
            result: ResultCode::SUCCESS,
            count: 0,
            activated: false,
            peer: None,
            installation: None,
        },
        clone_policy: Default::default(),
    }
}

type Batch = Vec<Work<std::convert::Infallible>>;

fn batch(changes: impl IntoIterator<Item = Changes>) -> Batch {
    changes
        .into_iter()
        .map(|c| Work::Changes(Box::new(c)))
        .collect()
}

fn counts(answers: &[Answer]) -> Vec<u32> {
    answers.iter().map(|a| a.counted().count).collect()
}

/// A pool table as a plain map, and the diff applied to it the way a backend writes it.
fn stored(snapshots: &[PoolSnapshot]) -> HashMap<Uuid, (u32, HashMap<Uuid, Timestamp>)> {
    snapshots
        .iter()
        .map(|s| (s.pool, (s.capacity, s.entries.iter().copied().collect())))
        .collect()
}

prop_compose! {
    fn snapshot(pool: u128)(entries in prop::collection::btree_map(0u128..12, -40i64..2, 0..8), capacity in 0u32..12) -> PoolSnapshot {
        PoolSnapshot {
            pool: Uuid::from_u128(pool),
            capacity,
            entries: entries.into_iter().map(|(c, d)| (Uuid::from_u128(100 + c), Timestamp(T0 + d * DAY_MS))).collect(),
        }
    }
}

proptest! {
    /// The diff is exact: written on the stored tables it gives what counting left in memory,
    /// and each answer is the count the request got when counted on its own, in order.
    #[test]
    fn the_diff_written_on_the_stored_tables_is_the_counted_table(
        before in (snapshot(1), snapshot(2)),
        requests in prop::collection::vec((1u128..=3, 0u128..12, prop::sample::select(vec![1u16, 2, 5]), 0i64..3), 1..40),
    ) {
        let snapshots = vec![before.0, before.1];
        let changes: Vec<Changes> = requests
            .iter()
            .map(|&(pool, client, threshold, day)| request(pool, client, threshold, T0 + day * DAY_MS))
            .collect();

        let mut one_by_one = CountTables::from_snapshots(snapshots.clone());
        let expected: Vec<u32> = changes
            .iter()
            .map(|c| c.counting.map_or(0, |r| one_by_one.apply(&r).0))
            .collect();

        let mut tables = CountTables::from_snapshots(snapshots.clone());
        let mut work = batch(changes);
        let diff = count(work.iter_mut(), &mut tables, Judge::default());
        prop_assert_eq!(counts(&diff.answers), expected);

        let mut db = stored(&snapshots);
        for d in &diff.pools {
            let (capacity, entries) = db.entry(d.pool).or_default();
            if let Some(c) = d.capacity {
                prop_assert!(c > *capacity, "a capacity only rises (R5)");
                *capacity = c;
            }
            for cmid in &d.removed {
                prop_assert!(entries.remove(cmid).is_some(), "only stored entries are removed");
            }
            for (cmid, at) in &d.upserts {
                entries.insert(*cmid, *at);
            }
        }
        for (pool, (capacity, entries)) in &db {
            let Some(table) = tables.pool(*pool) else {
                prop_assert!(entries.is_empty());
                continue;
            };
            prop_assert_eq!(*capacity, table.capacity());
            let counted: HashMap<Uuid, Timestamp> = table.entries().collect();
            prop_assert_eq!(entries, &counted);
        }
        let touched: Vec<Uuid> = diff.pools.iter().map(|d| d.pool).collect();
        let mut sorted = touched.clone();
        sorted.sort_unstable();
        prop_assert_eq!(touched, sorted, "pools in lock order");
        // Every counted request has its event 12290.
        prop_assert_eq!(diff.events.len(), requests.len());
    }
}

#[test]
fn refusals_are_aggregated_per_day_edition_and_result() {
    let refused = |ms: i64| {
        let mut c = request(1, 1, 1, T0 + ms);
        c.counting = None;
        c.registry.result = ResultCode::EDITION_NOT_COVERED;
        c
    };
    let (a, b, c) = (refused(0), refused(5), refused(DAY_MS));
    let mut work = batch([a, b, c]);
    let diff = count(
        work.iter_mut(),
        &mut CountTables::default(),
        Judge::default(),
    );
    assert_eq!(counts(&diff.answers), [0, 0, 0]);
    assert!(diff.pools.is_empty(), "a refusal counts nothing");
    assert!(diff.events.is_empty(), "nor writes an event row");
    let per_day: Vec<(i64, i64)> = diff.refusals.values().copied().collect();
    assert_eq!(per_day, [(2, T0 + 5), (1, T0 + DAY_MS)]);
}

#[test]
fn a_second_installation_in_one_batch_is_a_clone_counted_apart() {
    let ext = RequestExt {
        sequence: 7,
        hardware_digest: [1; 8],
    };
    let mut first = request(1, 1, 2, T0);
    first.registry.installation = Some(ext);
    let mut copy = first.clone();
    copy.registry.installation = Some(RequestExt {
        hardware_digest: [2; 8],
        ..ext
    });
    let mut work = batch([first, copy]);
    let diff = count(
        work.iter_mut(),
        &mut CountTables::default(),
        Judge::default(),
    );
    let answers: Vec<_> = diff.answers.iter().map(|a| a.counted()).collect();
    assert_eq!((answers[0].count, answers[0].clone), (1, false));
    assert_eq!((answers[1].count, answers[1].clone), (0, true));
    let Work::Changes(copy) = &work[1] else {
        unreachable!("built as changes")
    };
    assert_eq!(copy.registry.result, ResultCode::CLONE_DETECTED);
    assert!(copy.counting.is_none(), "no registry row for the copy");
    let ids: Vec<u32> = diff.events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, [12290, crate::EVENT_CLONE_DETECTED, 12290]);
    assert_eq!(diff.notes.clones, [Uuid::from_u128(101)]);
    assert_eq!(
        diff.notes.sequences.get(&Uuid::from_u128(101)),
        Some(&(7, [1; 8]))
    );
}

#[test]
fn events_jobs_keep_their_place_and_answer_done() {
    let event = crate::registry_full_event(Timestamp(T0), 5);
    let mut work: Batch = vec![
        Work::Events(vec![event.clone()]),
        Work::Changes(Box::new(request(1, 1, 1, T0))),
    ];
    let diff = count(
        work.iter_mut(),
        &mut CountTables::default(),
        Judge::default(),
    );
    assert!(matches!(diff.answers[0], Answer::Done));
    assert_eq!(diff.events[0].event_id, event.event_id);
    assert_eq!(diff.events[1].event_id, 12290);
}
