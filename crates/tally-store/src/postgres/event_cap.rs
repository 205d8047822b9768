//! The event cap on a fleet's shared table (issue 21; `crate::event_cap`): one host prunes at a
//! time, under a transaction-level advisory lock taken with `pg_try_advisory_xact_lock` (a host
//! that does not get it leaves the step to the host that has it and checks again after its next
//! batch). Deleting the oldest ids commutes with every host's inserts (new rows get higher ids).

use deadpool_postgres::Object;
use tally_core::time::Timestamp;

use super::sql::{EventRows, INSERT_EVENTS};
use crate::event_cap::{EVENT_CAP_LOCK, Tracker};

/// One step of the cap on the batcher's connection, after a committed batch. A failure is
/// logged and tried again after the next batch; it never fails a request.
pub(super) async fn enforce(client: &mut Object, cap: &mut Tracker, now: Timestamp, host: &str) {
    match step(client, cap, now, host).await {
        Ok(Some((deleted, started))) => cap.pruned(deleted, started),
        Ok(None) => {}
        Err(error) => {
            cap.failed();
            tracing::warn!(%error, "cannot delete the oldest events for the event cap");
        }
    }
}

async fn step(
    client: &mut Object,
    cap: &mut Tracker,
    now: Timestamp,
    host: &str,
) -> Result<Option<(u64, bool)>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '30s'")
        .await?;
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&EVENT_CAP_LOCK])
        .await?
        .get(0);
    if !locked {
        // Another host is pruning now: its step covers the fleet's table.
        return Ok(None);
    }
    let row = tx
        .query_one(
            "SELECT (SELECT min(id) FROM events), (SELECT max(id) FROM events)",
            &[],
        )
        .await?;
    let span = row
        .get::<_, Option<i64>>(0)
        .zip(row.get::<_, Option<i64>>(1));
    let Some(prune) = cap.plan(span, now) else {
        tx.commit().await?;
        return Ok(None);
    };
    let deleted = tx
        .execute("DELETE FROM events WHERE id < $1", &[&prune.below])
        .await?;
    if let Some(e) = &prune.event {
        let rows = EventRows::new(std::slice::from_ref(e), host);
        tx.execute(INSERT_EVENTS, &rows.params()).await?;
    }
    tx.commit().await?;
    Ok(Some((deleted, prune.event.is_some())))
}
