//! Tests of the registry views: census bounds against client states, whole-registry reads across
//! keyset pages, lifecycle states, CSV quoting, the daily series and `_rfc3339` twins.

use super::*;
use serde_json::json;

// The census bounds sort every machine as ClientState::of does: activated or not, one
// millisecond either side of each bound, with a renewal interval shorter and longer than
// the validity.
#[test]
fn census_cutoffs_agree_with_client_state() {
    let now = Timestamp(1_800_000_000_000);
    for (renewal, activation) in [(604_800, 7200), (365 * 86_400, 7200), (1, 1)] {
        let cut = cutoffs(now, renewal, activation);
        let bounds = [
            cut.validity_before.millis(),
            cut.renewal_before.millis(),
            cut.grace_before.millis(),
            now.millis(),
        ];
        for at in bounds.iter().flat_map(|b| [b - 1, *b, b + 1]) {
            for (activated, first, last) in [
                (true, at - DAY_MS, at),
                (false, at, now.millis()),
                (false, at, at),
            ] {
                let entry = RegistryEntry {
                    cmid: uuid::Uuid::nil(),
                    machine_name: "pc".into(),
                    sku: uuid::Uuid::nil(),
                    pool: uuid::Uuid::nil(),
                    first_seen: Timestamp(first),
                    last_seen: Timestamp(last),
                    last_result: 0,
                    last_count: 1,
                    activated,
                    requests: 1,
                    served_by: None,
                    clones: 0,
                };
                let mut row = tally_store::CensusRow::default();
                row.add(&cut, activated, entry.first_seen, entry.last_seen);
                let bucket = match ClientState::of(&entry, now, renewal, activation) {
                    ClientState::Activated => row.activated,
                    ClientState::RenewalOverdue => row.renewal_overdue,
                    ClientState::Expired => row.expired,
                    ClientState::InGrace => row.in_grace,
                };
                assert_eq!(
                    (bucket, row.machines),
                    (1, 1),
                    "{entry:?} at {renewal}/{activation}"
                );
            }
        }
    }
}

// Whole-registry reads over several keyset pages: every machine counted once, a search and
// a filter kept, the order asked for (issue 14: one pass, one page in memory).
#[tokio::test]
async fn whole_registry_reads_cross_keyset_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tally.db");
    let catalog = Catalog::demo();
    let edition = &catalog.editions()[0];
    let now = Timestamp(1_800_000_000_000);
    let rows = u64::from(KEYSET_PAGE) * 2 + 7;
    let store =
        tally_store::sqlite::SqliteStore::open(&path, tally_store::sqlite::Durability::Normal)
            .expect("open");
    store
        .seed_registry(rows, edition.sku, edition.pool, now, |_| {})
        .await
        .expect("seed");
    let counts = per_edition_of_registry(&store, &catalog, now, 604_800, 7200)
        .await
        .expect("summary");
    let total: u64 = counts.iter().map(|c| c.machines).sum();
    assert_eq!(total, rows);
    // The store's aggregate sorts as ClientState::of does, row by row, at a time when the
    // seeded machines span every state an activated machine can be in.
    let later = Timestamp(now.millis() + 3 * DAY_MS);
    let at_later = per_edition_of_registry(&store, &catalog, later, 604_800, 7200)
        .await
        .expect("summary");
    let all = classify(
        store
            .registry_in_period(Timestamp(i64::MIN), Timestamp(i64::MAX), None, u32::MAX)
            .await
            .expect("all rows"),
        &catalog,
        None,
        later,
        604_800,
        7200,
    );
    let of = |s: ClientState| all.iter().filter(|r| r.state == s).count() as u64;
    let c = at_later
        .iter()
        .find(|c| c.sku == edition.sku.to_string())
        .expect("edition");
    let (current, overdue, expired) = (
        of(ClientState::Activated),
        of(ClientState::RenewalOverdue),
        of(ClientState::Expired),
    );
    assert!(
        current > 0 && overdue > 0 && expired > 0,
        "seed spans the states"
    );
    assert_eq!(
        (c.machines, c.activated, c.renewal_overdue, c.expired),
        (rows, current + overdue, overdue, expired)
    );
    let sel = Selection {
        search: Some("SEED-0000100".into()),
        sort: RegistrySort::Machine,
        filter: None,
    };
    let found = selected_rows(&store, &catalog, &sel, now, 604_800, 7200)
        .await
        .expect("search");
    let names: Vec<&str> = found
        .iter()
        .map(|r| r.entry.machine_name.as_str())
        .collect();
    let want: Vec<String> = (1000..1010).map(|i| format!("seed-{i:08}")).collect();
    assert_eq!(names, want);
    let expired = Selection {
        filter: Some(Filter::Expired),
        ..Selection::default()
    };
    let kept = selected_rows(&store, &catalog, &expired, now, 604_800, 7200)
        .await
        .expect("filter");
    assert!(kept.iter().all(|r| r.state == ClientState::Expired));
    assert!(
        kept.windows(2)
            .all(|w| w[0].entry.last_seen >= w[1].entry.last_seen)
    );
    let in_counts: u64 = counts.iter().map(|c| c.expired).sum();
    assert_eq!(
        kept.len() as u64,
        in_counts,
        "the filter and the summary agree"
    );
}

fn row(activated: bool, first_days_ago: i64, last_days_ago: i64, now: Timestamp) -> RegistryEntry {
    RegistryEntry {
        cmid: uuid::Uuid::nil(),
        machine_name: "=cmd,1".into(),
        sku: uuid::Uuid::nil(),
        pool: uuid::Uuid::nil(),
        first_seen: now.plus_days(-first_days_ago),
        last_seen: now.plus_days(-last_days_ago),
        last_result: 0,
        last_count: 1,
        activated,
        requests: 1,
        served_by: None,
        clones: 0,
    }
}

#[test]
fn states_follow_the_lifecycle_rules() {
    let now = Timestamp(1_800_000_000_000);
    let week = 7 * 86_400;
    let s = |a, f, l| ClientState::of(&row(a, f, l, now), now, week, 7200);
    assert_eq!(s(true, 10, 1), ClientState::Activated);
    assert_eq!(s(true, 30, 9), ClientState::RenewalOverdue);
    assert_eq!(s(true, 300, 181), ClientState::Expired);
    assert_eq!(s(false, 3, 0), ClientState::InGrace);
    assert_eq!(s(false, 31, 0), ClientState::Expired);
    assert_eq!(Filter::parse("in_grace"), Some(Filter::InGrace));
    assert_eq!(Filter::parse("nope"), None);
}

#[test]
fn csv_quotes_and_defuses_formulas() {
    let now = Timestamp(1_800_000_000_000);
    let rows = classify(
        vec![row(false, 1, 0, now)],
        &Catalog::demo(),
        None,
        now,
        3600,
        60,
    );
    let text = csv(&rows);
    let line = text.lines().nth(1).unwrap_or_default();
    assert!(line.starts_with("\"'=cmd,1\","), "{line}");
    assert!(line.contains(",in_grace,"), "{line}");
    assert!(line.contains("Z,"), "UTC times: {line}");
    // A single host's rows name no host; a fleet's name the one that served the machine,
    // defused like any text a client could choose.
    assert!(
        text.starts_with("machine_name,")
            && text
                .lines()
                .next()
                .is_some_and(|h| h.ends_with(",clones,served_by")),
        "{text}"
    );
    assert!(line.ends_with(','), "{line}");
    let mut rows = rows;
    rows[0].entry.served_by = Some("=host-2".into());
    let text = csv(&rows);
    let line = text.lines().nth(1).unwrap_or_default();
    assert!(line.ends_with(",'=host-2"), "{line}");
}

#[test]
fn series_counts_activations_and_distinct_machines_per_day() {
    let now = Timestamp(1_800_000_000_000);
    let ev = |days_ago: i64, cmid: &str, activated: bool| Event {
        at: now.plus_days(-days_ago),
        event_id: 12290,
        level: "info".into(),
        message: String::new(),
        data: json!({ "cmid": cmid, "activated": activated }),
    };
    let events = [
        ev(0, "a", true),
        ev(0, "a", true),
        ev(0, "b", false),
        ev(2, "c", true),
        ev(40, "d", true),
    ];
    let days = series(&events, now, 30);
    assert_eq!(days.len(), 30);
    let today = &days[29];
    assert_eq!((today.activations, today.machines), (2, 2));
    assert_eq!((days[27].activations, days[27].machines), (1, 1));
    assert_eq!(
        days.iter().map(|d| d.machines).sum::<u64>(),
        3,
        "40 days ago is outside"
    );
}

#[test]
fn rfc3339_is_added_beside_ms_times_only() {
    let mut v = json!({
        "at": 1_800_000_000_000_i64,
        "count": 5,
        "renewal_interval_secs": 604800,
        "nested": [{ "last_seen": 1_800_000_000_000_i64, "last_seen_rfc3339": "kept" }],
        "not_after": 1_800_000_000_000_i64, "not_after_utc": "theirs"
    });
    with_rfc3339(&mut v);
    assert_eq!(v["at_rfc3339"], "2027-01-15T08:00:00Z");
    assert!(v.get("count_rfc3339").is_none());
    assert!(v.get("renewal_interval_secs_rfc3339").is_none());
    assert_eq!(v["nested"][0]["last_seen_rfc3339"], "kept");
    assert!(v.get("not_after_rfc3339").is_none());
}
