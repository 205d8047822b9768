//! The registry's SQL: the page and period queries, the search by name prefix, the census the
//! dashboard's counts come from, and how a row becomes a [`RegistryEntry`].

use std::collections::BTreeMap;

use rusqlite::{Connection, Row};
use tally_core::time::Timestamp;
use uuid::Uuid;

use crate::{CensusCutoffs, CensusRow, RegistryEntry, RegistrySort};

pub(super) fn uuid_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<Uuid> {
    // A 16-byte array straight from SQLite's row (no Vec); rusqlite's errors name the column.
    row.get::<_, [u8; 16]>(idx).map(Uuid::from_bytes)
}

/// A search: machine names from `:lo` (inclusive) to `:hi` (exclusive), case-insensitive, by
/// the `registry_name` index (see [`crate::prefix_bounds`]). Without a search the query has no
/// condition at all: an `:lo IS NULL OR …` would keep SQLite from using the index.
pub(super) const NAME_PREFIX: &str =
    "WHERE machine_name COLLATE NOCASE >= :lo AND machine_name COLLATE NOCASE < :hi";

/// Most matches of a search sorted in memory by SQLite; a search with more is answered by the
/// order's index with the name condition as a filter (see [`page_sql`]).
pub(super) const SORT_AT_MOST: i64 = 20_000;

/// How a page's search is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Search {
    /// No search.
    None,
    /// By the name index (a range), then sorted if the order is not by name.
    Indexed,
    /// By the order's index, the name condition checked on each row (`+machine_name` keeps
    /// SQLite off the name index): for searches with more than [`SORT_AT_MOST`] matches.
    Filtered,
}

/// A registry page's SQL. Ties are broken by rowid, so each order is one index scan (covering
/// while rows are skipped: a deep offset does not read the rows it skips). The order comes from
/// a closed enum, never from the request text.
pub(super) fn page_sql(sort: RegistrySort, search: Search) -> String {
    let order = match sort {
        RegistrySort::LastSeen => "last_seen DESC, rowid DESC",
        RegistrySort::Machine => "machine_name COLLATE NOCASE, rowid",
        RegistrySort::FirstSeen => "first_seen, rowid",
    };
    let filter = match search {
        Search::None => "",
        Search::Indexed => NAME_PREFIX,
        Search::Filtered => {
            "WHERE +machine_name COLLATE NOCASE >= :lo AND +machine_name COLLATE NOCASE < :hi"
        }
    };
    format!(
        "SELECT {REGISTRY_COLUMNS} FROM registry {filter} ORDER BY {order} LIMIT :limit OFFSET :offset"
    )
}

/// A period's keyset page (`registry_in_period`). The empty blob is bound for "from the start":
/// it sorts before every CMID, so each page is a range search of the primary key, never a scan.
pub(super) fn period_sql() -> String {
    format!(
        "SELECT {REGISTRY_COLUMNS} FROM registry
         WHERE cmid > :after AND last_seen >= :from AND first_seen < :to
         ORDER BY cmid LIMIT :limit"
    )
}

pub(super) const REGISTRY_COLUMNS: &str = "cmid, machine_name, sku, pool, first_seen, last_seen, last_result, last_count, activated, requests, clones";

/// [`Store::registry_census`]: what sorts a machine into its state ([`CensusRow::add`]).
pub(super) const CENSUS_SQL: &str =
    "SELECT sku, pool, activated, first_seen, last_seen FROM registry";

/// The scan behind [`Store::registry_census`].
pub(super) fn census(
    conn: &Connection,
    cutoffs: &CensusCutoffs,
) -> rusqlite::Result<Vec<CensusRow>> {
    let mut by_edition: BTreeMap<(Uuid, Uuid), CensusRow> = BTreeMap::new();
    let mut stmt = conn.prepare_cached(CENSUS_SQL)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let (sku, pool) = (uuid_col(row, 0)?, uuid_col(row, 1)?);
        by_edition
            .entry((sku, pool))
            .or_insert(CensusRow {
                sku,
                pool,
                ..CensusRow::default()
            })
            .add(
                cutoffs,
                row.get(2)?,
                Timestamp(row.get(3)?),
                Timestamp(row.get(4)?),
            );
    }
    Ok(by_edition.into_values().collect())
}

pub(super) fn registry_row(row: &Row<'_>) -> rusqlite::Result<RegistryEntry> {
    Ok(RegistryEntry {
        cmid: uuid_col(row, 0)?,
        machine_name: row.get(1)?,
        sku: uuid_col(row, 2)?,
        pool: uuid_col(row, 3)?,
        first_seen: Timestamp(row.get(4)?),
        last_seen: Timestamp(row.get(5)?),
        last_result: row.get(6)?,
        last_count: row.get(7)?,
        activated: row.get(8)?,
        requests: row.get::<_, i64>(9)?.max(0) as u64,
        served_by: None,
        clones: u32::try_from(row.get::<_, i64>(10)?).unwrap_or(0),
    })
}
