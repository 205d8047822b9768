//! X5 on the fleet's database: what it knows about the time (its own clock, the trusted mark, the
//! newest times stored) and trusting the clock (the mark and the pull-back of future stamps).

use deadpool_postgres::Object;
use tally_core::clock::CLOCK_TOLERANCE_MS;
use tally_core::time::Timestamp;

use super::backend;
use crate::{ClockEvidence, StoreError};

/// The clock, the mark and the newest time of each table that holds one (each from its index;
/// `GREATEST` ignores the NULLs of empty tables).
const EVIDENCE: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8,
    (SELECT at FROM clock_marks WHERE name = 'trusted'),
    GREATEST((SELECT max(last_seen) FROM pool_entries), (SELECT max(last_seen) FROM registry),
             (SELECT max(last_seen) FROM bench_registry), (SELECT max(at) FROM events))";

pub(super) async fn evidence(client: &Object) -> Result<ClockEvidence, StoreError> {
    let row = client
        .query_one(EVIDENCE, &[])
        .await
        .map_err(backend("read clock evidence"))?;
    Ok(ClockEvidence {
        database_now: Some(Timestamp(row.get(0))),
        trusted_mark: row.get::<_, Option<i64>>(1).map(Timestamp),
        newest_stored: row.get::<_, Option<i64>>(2).map(Timestamp),
    })
}

/// Moves the mark to `at` (never back) and pulls entries and registry rows stamped beyond `at` +
/// tolerance back to `at`; table entries under every pool's lock (in pool order, as batches take
/// them), so no batch counts on a table half pulled back.
pub(super) async fn trust(client: &mut Object, at: Timestamp) -> Result<u64, StoreError> {
    let tx = client.transaction().await.map_err(backend("trust clock"))?;
    let (at, limit) = (at.millis(), at.millis().saturating_add(CLOCK_TOLERANCE_MS));
    let run = async {
        // The pools' locks only when a table holds a stamp to pull back (rare: after a clock
        // ran ahead), so the check every few minutes does not wait on the fleet's batches.
        let future: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pool_entries WHERE last_seen > $1)",
                &[&limit],
            )
            .await?
            .get(0);
        if future {
            tx.execute("SELECT pool FROM pools ORDER BY pool FOR UPDATE", &[])
                .await?;
        }
        tx.execute(
            "INSERT INTO clock_marks (name, at) VALUES ('trusted', $1)
             ON CONFLICT (name) DO UPDATE SET at = GREATEST(clock_marks.at, EXCLUDED.at)",
            &[&at],
        )
        .await?;
        let mut n = tx
            .execute(
                "UPDATE pool_entries SET last_seen = $1 WHERE last_seen > $2",
                &[&at, &limit],
            )
            .await?;
        for table in ["registry", "bench_registry"] {
            let sql = format!(
                "UPDATE {table} SET last_seen = $1, first_seen = LEAST(first_seen, $1)
                 WHERE last_seen > $2"
            );
            n += tx.execute(sql.as_str(), &[&at, &limit]).await?;
        }
        Ok::<u64, tokio_postgres::Error>(n)
    };
    let n = run.await.map_err(backend("trust clock"))?;
    tx.commit().await.map_err(backend("trust clock"))?;
    Ok(n)
}
