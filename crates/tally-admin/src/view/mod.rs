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
mod tests;
