//! X5 on the embedded store: what it knows about the time (read connection) and trusting the
//! clock (the writer: the mark and the pull-back of future stamps, in one transaction).

use rusqlite::{Connection, params};
use tally_core::clock::CLOCK_TOLERANCE_MS;
use tally_core::time::Timestamp;

use crate::ClockEvidence;

/// The newest time in every table that holds one (each read from its index), and the mark.
const EVIDENCE: &str = "SELECT (SELECT at FROM clock_marks WHERE name = 'trusted'),
    (SELECT max(x) FROM (SELECT max(last_seen) AS x FROM pool_entries
                         UNION ALL SELECT max(last_seen) FROM registry
                         UNION ALL SELECT max(last_seen) FROM bench_registry
                         UNION ALL SELECT max(at) FROM events))";

pub(super) fn evidence(conn: &Connection) -> rusqlite::Result<ClockEvidence> {
    conn.prepare_cached(EVIDENCE)?.query_row([], |r| {
        Ok(ClockEvidence {
            database_now: None,
            trusted_mark: r.get::<_, Option<i64>>(0)?.map(Timestamp),
            newest_stored: r.get::<_, Option<i64>>(1)?.map(Timestamp),
        })
    })
}

/// Moves the mark to `at` (never back) and pulls table entries and registry rows stamped beyond
/// `at` + tolerance back to `at`; returns the rows pulled back.
pub(super) fn trust(conn: &mut Connection, at: Timestamp) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO clock_marks (name, at) VALUES ('trusted', ?1)
         ON CONFLICT (name) DO UPDATE SET at = max(at, excluded.at)",
        params![at.millis()],
    )?;
    let limit = at.millis().saturating_add(CLOCK_TOLERANCE_MS);
    let mut n = tx.execute(
        "UPDATE pool_entries SET last_seen = ?1 WHERE last_seen > ?2",
        params![at.millis(), limit],
    )? as u64;
    for table in ["registry", "bench_registry"] {
        n += tx.execute(
            &format!(
                "UPDATE {table} SET last_seen = ?1, first_seen = min(first_seen, ?1)
                 WHERE last_seen > ?2"
            ),
            params![at.millis(), limit],
        )? as u64;
    }
    tx.commit()?;
    Ok(n)
}
