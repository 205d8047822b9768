//! What the dashboard and the command line show of the registry (R6): each client's state as
//! the host sees it, filters, per-edition counts, activations over time, CSV; and the one rule
//! for times in JSON (every Unix-ms time also as `<name>_rfc3339`, UTC).
//!
//! The summary's per-edition counts come from the store's census ([`Store::registry_census`],
//! with the bounds of [`cutoffs`]). Filters and the CSV export read the registry whole, in
//! CMID-ordered keyset pages, one pass that holds one page at a time (plus what a filter keeps).

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde_json::Value;
use tally_core::Catalog;
use tally_core::time::Timestamp;
use tally_store::{
    CensusCutoffs, Event, EventQuery, RegistryEntry, RegistrySort, Store, StoreError,
};

/// R7: a license is valid 180 days from the last success.
const VALIDITY_DAYS: i64 = 180;
/// R10: a new installation's grace period.
const GRACE_DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;
/// Rows read per keyset page when the registry is read whole.
const KEYSET_PAGE: u32 = 5000;

/// A client's state as the host sees it from its registry row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientState {
    /// Activated, and renewed within the renewal interval (R8).
    Activated,
    /// Activated, but not seen for longer than the renewal interval (and the retry interval).
    RenewalOverdue,
    /// Not activated yet (count below the threshold, R2) and within its 30 days of grace.
    InGrace,
    /// Validity (180 days, R7) or grace (30 days, R10) ran out without a renewal seen here.
    Expired,
}

impl ClientState {
    /// The state of `row` at `now`, with the host's intervals in seconds.
    pub fn of(
        row: &RegistryEntry,
        now: Timestamp,
        renewal_secs: u32,
        activation_secs: u32,
    ) -> Self {
        let since_seen = now.millis() - row.last_seen.millis();
        if row.activated {
            if since_seen > VALIDITY_DAYS * DAY_MS {
                Self::Expired
            } else if since_seen > (i64::from(renewal_secs) + i64::from(activation_secs)) * 1000 {
                Self::RenewalOverdue
            } else {
                Self::Activated
            }
        } else if now.millis() - row.first_seen.millis() > GRACE_DAYS * DAY_MS {
            Self::Expired
        } else {
            Self::InGrace
        }
    }
}

/// The bounds [`ClientState::of`] sorts by, for the store's aggregate count
/// ([`Store::registry_census`]): the same states, counted where the rows are.
pub fn cutoffs(now: Timestamp, renewal_secs: u32, activation_secs: u32) -> CensusCutoffs {
    let ago = |ms: i64| Timestamp(now.millis().saturating_sub(ms));
    CensusCutoffs {
        validity_before: ago(VALIDITY_DAYS * DAY_MS),
        renewal_before: ago((i64::from(renewal_secs) + i64::from(activation_secs)) * 1000),
        grace_before: ago(GRACE_DAYS * DAY_MS),
    }
}

/// A registry filter of the dashboard and `tally host clients --filter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// The last answer's count was below the edition's threshold.
    NotActivated,
    /// [`ClientState::InGrace`].
    InGrace,
    /// [`ClientState::RenewalOverdue`].
    RenewalOverdue,
    /// [`ClientState::Expired`].
    Expired,
}

impl Filter {
    /// Parses `not_activated`, `in_grace`, `renewal_overdue` or `expired`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "not_activated" => Some(Self::NotActivated),
            "in_grace" => Some(Self::InGrace),
            "renewal_overdue" => Some(Self::RenewalOverdue),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }

    fn keeps(self, row: &RegistryEntry, state: ClientState) -> bool {
        match self {
            Self::NotActivated => !row.activated,
            Self::InGrace => state == ClientState::InGrace,
            Self::RenewalOverdue => state == ClientState::RenewalOverdue,
            Self::Expired => state == ClientState::Expired,
        }
    }
}

/// One registry row with its edition's name and state, as the API and the CLI print it.
#[derive(Clone, Debug, Serialize)]
pub struct ClientRow {
    /// The registry row.
    #[serde(flatten)]
    pub entry: RegistryEntry,
    /// The edition's name in the catalog (the SKU id when the catalog does not know it).
    pub edition: String,
    /// The state as the host sees it.
    pub state: ClientState,
}

/// What a whole-registry read keeps: a name prefix (any case), a state filter, an order.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only machines whose name starts with this text, in any case.
    pub search: Option<String>,
    /// Only machines in this state.
    pub filter: Option<Filter>,
    /// The order of the result.
    pub sort: RegistrySort,
}

/// Reads the registry's machines seen in `[from, to)` in CMID-ordered keyset pages
/// (`Store::registry_in_period`) and hands each page to `each` before reading the next: one pass
/// at any size, one page in memory.
pub async fn for_each_page(
    store: &dyn Store,
    from: Timestamp,
    to: Timestamp,
    mut each: impl FnMut(Vec<RegistryEntry>),
) -> Result<(), StoreError> {
    let mut after = None;
    loop {
        let page = store
            .registry_in_period(from, to, after, KEYSET_PAGE)
            .await?;
        let done = page.len() < KEYSET_PAGE as usize;
        after = page.last().map(|e| e.cmid);
        each(page);
        if done {
            return Ok(());
        }
    }
}

/// The rows of the whole registry that `sel` keeps, named, classified and in `sel`'s order.
/// The registry is read in CMID-ordered keyset pages (`Store::registry_in_period`), each page
/// classified and filtered before the next is read, so a read costs one pass and holds only
/// what it keeps, whatever the registry's size (the dashboard's filters and CSV export).
pub async fn selected_rows(
    store: &dyn Store,
    catalog: &Catalog,
    sel: &Selection,
    now: Timestamp,
    renewal_secs: u32,
    activation_secs: u32,
) -> Result<Vec<ClientRow>, StoreError> {
    let prefix = sel.search.as_deref().map(str::to_lowercase);
    let mut kept = Vec::new();
    for_each_page(
        store,
        Timestamp(i64::MIN),
        Timestamp(i64::MAX),
        |mut page| {
            if let Some(p) = prefix.as_deref() {
                page.retain(|e| e.machine_name.to_lowercase().starts_with(p));
            }
            kept.extend(classify(
                page,
                catalog,
                sel.filter,
                now,
                renewal_secs,
                activation_secs,
            ));
        },
    )
    .await?;
    match sel.sort {
        RegistrySort::LastSeen => kept.sort_by(|a, b| {
            (b.entry.last_seen, b.entry.cmid).cmp(&(a.entry.last_seen, a.entry.cmid))
        }),
        RegistrySort::Machine => {
            kept.sort_by_cached_key(|r| (r.entry.machine_name.to_lowercase(), r.entry.cmid))
        }
        RegistrySort::FirstSeen => kept.sort_by_key(|r| (r.entry.first_seen, r.entry.cmid)),
    }
    Ok(kept)
}

/// Names and classifies `rows`, keeping those `filter` keeps.
pub fn classify(
    rows: Vec<RegistryEntry>,
    catalog: &Catalog,
    filter: Option<Filter>,
    now: Timestamp,
    renewal_secs: u32,
    activation_secs: u32,
) -> Vec<ClientRow> {
    rows.into_iter()
        .filter_map(|entry| {
            let state = ClientState::of(&entry, now, renewal_secs, activation_secs);
            if filter.is_some_and(|f| !f.keeps(&entry, state)) {
                return None;
            }
            let edition = catalog
                .edition(entry.sku)
                .map_or_else(|| entry.sku.to_string(), |e| e.name.clone());
            Some(ClientRow {
                entry,
                edition,
                state,
            })
        })
        .collect()
}

/// The registry as CSV (UTC times), one row per client, with a header; the last column,
/// `served_by`, names the fleet host that answered the machine's latest request.
pub fn csv(rows: &[ClientRow]) -> String {
    let mut out = String::from(
        "machine_name,cmid,edition,state,first_seen_utc,last_seen_utc,last_count,activated,requests,clones,served_by\n",
    );
    for r in rows {
        let e = &r.entry;
        let fields = [
            csv_field(&e.machine_name),
            e.cmid.to_string(),
            csv_field(&r.edition),
            to_name(r.state),
            e.first_seen.to_rfc3339(),
            e.last_seen.to_rfc3339(),
            e.last_count.to_string(),
            e.activated.to_string(),
            e.requests.to_string(),
            // X6: how often another installation presented this CMID.
            e.clones.to_string(),
            // Fleet mode: the host that answered the latest request (empty on a single host).
            csv_field(e.served_by.as_deref().unwrap_or_default()),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

fn to_name(state: ClientState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// RFC 4180 quoting; a leading `=`, `+`, `-` or `@` is prefixed with `'` so that a machine name
/// cannot become a spreadsheet formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Machines per edition in the registry, by state.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EditionCount {
    /// The edition's SKU id.
    pub sku: String,
    /// Its name.
    pub name: String,
    /// `client` or `server`.
    pub kind: String,
    /// Its pool's id.
    pub pool: String,
    /// Its threshold (R1).
    pub threshold: u16,
    /// Machines in the registry with this edition.
    pub machines: u64,
    /// Of which activated.
    pub activated: u64,
    /// In grace (not activated yet).
    pub in_grace: u64,
    /// Renewal overdue.
    pub renewal_overdue: u64,
    /// Expired.
    pub expired: u64,
}

/// Per-edition counts of the whole registry, from one aggregate query of the store
/// ([`Store::registry_census`]): no row is read into memory, whatever the registry's size (the
/// dashboard's summary). Every catalog edition is listed, with zeros when it has no machine.
pub async fn per_edition_of_registry(
    store: &dyn Store,
    catalog: &Catalog,
    now: Timestamp,
    renewal_secs: u32,
    activation_secs: u32,
) -> Result<Vec<EditionCount>, StoreError> {
    let census = store
        .registry_census(cutoffs(now, renewal_secs, activation_secs))
        .await?;
    let mut by_sku: BTreeMap<String, EditionCount> = catalog
        .editions()
        .iter()
        .map(|e| {
            (
                e.sku.to_string(),
                EditionCount {
                    sku: e.sku.to_string(),
                    name: e.name.clone(),
                    kind: format!("{:?}", e.kind).to_ascii_lowercase(),
                    pool: e.pool.to_string(),
                    threshold: e.threshold,
                    ..EditionCount::default()
                },
            )
        })
        .collect();
    for row in census {
        let c = by_sku
            .entry(row.sku.to_string())
            .or_insert_with(|| EditionCount {
                sku: row.sku.to_string(),
                name: row.sku.to_string(),
                pool: row.pool.to_string(),
                ..EditionCount::default()
            });
        c.machines += row.machines;
        // An overdue machine is still activated (its validity runs, R7).
        c.activated += row.activated + row.renewal_overdue;
        c.renewal_overdue += row.renewal_overdue;
        c.expired += row.expired;
        c.in_grace += row.in_grace;
    }
    let mut out: Vec<EditionCount> = by_sku.into_values().collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// One UTC day of activation requests (event 12290).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Day {
    /// The day's start (Unix ms, UTC midnight).
    pub day: Timestamp,
    /// Requests answered with an activation (count at or above the threshold).
    pub activations: u64,
    /// Distinct machines (CMIDs) that asked that day.
    pub machines: u64,
}

/// The last `days` UTC days (oldest first, today included) of activations and distinct machines,
/// from the 12290 events.
pub fn series(events: &[Event], now: Timestamp, days: u32) -> Vec<Day> {
    let today = now.millis().div_euclid(DAY_MS) * DAY_MS;
    let first = today - i64::from(days.saturating_sub(1)) * DAY_MS;
    let mut per_day: BTreeMap<i64, (u64, HashSet<String>)> = (0..i64::from(days))
        .map(|i| (first + i * DAY_MS, (0, HashSet::new())))
        .collect();
    for e in events.iter().filter(|e| e.event_id == 12290) {
        let day = e.at.millis().div_euclid(DAY_MS) * DAY_MS;
        let Some((activations, machines)) = per_day.get_mut(&day) else {
            continue;
        };
        if e.data.get("activated") == Some(&Value::Bool(true)) {
            *activations += 1;
        }
        if let Some(cmid) = e.data.get("cmid").and_then(Value::as_str) {
            machines.insert(cmid.to_owned());
        }
    }
    per_day
        .into_iter()
        .map(|(day, (activations, machines))| Day {
            day: Timestamp(day),
            activations,
            machines: machines.len() as u64,
        })
        .collect()
}

/// The 12290 events since `since` (at most 100 000, newest first), for [`series`].
pub async fn activation_events(
    store: &dyn Store,
    since: Timestamp,
) -> Result<Vec<Event>, StoreError> {
    store
        .events(EventQuery {
            since: Some(since),
            event_id: Some(12290),
            limit: 100_000,
        })
        .await
}

/// Adds `<name>_rfc3339` (UTC, e.g. `2026-10-01T12:00:00Z`) beside every Unix-ms time in `v`,
/// recursively. A time is an integer field named `at`, `time`, `day`, or ending in `_at`,
/// `_seen`, `_end`, `_after`, `_before` or `_attempt`, with a value in the plausible ms range;
/// a field that already has its `_rfc3339` (or `_utc`) sibling is left alone.
pub fn with_rfc3339(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let mut add = Vec::new();
            for (k, val) in map.iter() {
                let is_time_name = matches!(k.as_str(), "at" | "time" | "day")
                    || ["_at", "_seen", "_end", "_after", "_before", "_attempt"]
                        .iter()
                        .any(|s| k.ends_with(s));
                let Some(ms) = val.as_i64() else { continue };
                // 1973..5138: a bare count or an interval in seconds is never taken for a time.
                if is_time_name
                    && (100_000_000_000..100_000_000_000_000).contains(&ms)
                    && !map.contains_key(&format!("{k}_rfc3339"))
                    && !map.contains_key(&format!("{k}_utc"))
                {
                    add.push((format!("{k}_rfc3339"), Timestamp(ms).to_rfc3339()));
                }
            }
            for (k, s) in add {
                map.insert(k, Value::String(s));
            }
            for val in map.values_mut() {
                with_rfc3339(val);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(with_rfc3339),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
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

    fn row(
        activated: bool,
        first_days_ago: i64,
        last_days_ago: i64,
        now: Timestamp,
    ) -> RegistryEntry {
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
}
