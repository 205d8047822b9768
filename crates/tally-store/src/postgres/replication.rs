//! Reads the fleet database's replication (`crate::replication` assesses it) at start and every
//! [`CHECK_EVERY`] while the host runs: a change is logged once (a warning when acknowledged
//! commits would not survive a failover, with event 1010), and a synchronous standby that is
//! gone makes the store "down" (every commit waits for it) with that reason.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::Pool;
use tally_core::time::Timestamp;
use tokio::sync::mpsc;

use super::batch::{Job, Work};
use super::{backend, pool_error};
use crate::health::Health;
use crate::replication::{EVENT_REPLICATION, Replication, ReplicationMode, Standby};
use crate::{Event, StoreError};

/// How often a running host reads the replication state.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// The three inputs, in one round trip. `sync_state` and `state` are hidden (NULL) from a role
/// without `pg_monitor` / `pg_read_all_stats`.
const READ: &str = "SELECT current_setting('synchronous_commit'),
        current_setting('synchronous_standby_names'),
        COALESCE(application_name, ''), state, sync_state
   FROM (SELECT 1) AS one LEFT JOIN pg_stat_replication ON true";

/// Reads and assesses the replication of the database behind `pool`.
pub async fn check(pool: &Pool) -> Result<Replication, StoreError> {
    let client = pool.get().await.map_err(pool_error(pool))?;
    let rows = client
        .query(READ, &[])
        .await
        .map_err(backend("read replication state"))?;
    let first = rows.first().ok_or_else(|| StoreError::Backend {
        operation: "read replication state",
        source: Arc::new(std::io::Error::other("no row")),
    })?;
    let (commit, names): (String, String) = (first.get(0), first.get(1));
    let standbys = rows
        .iter()
        .filter(|r| r.get::<_, Option<String>>(3).is_some() || !r.get::<_, String>(2).is_empty())
        .map(|r| Standby {
            name: r.get(2),
            state: r.get(3),
            sync_state: r.get(4),
        })
        .collect();
    Ok(Replication::assess(&commit, &names, standbys))
}

/// The last assessment, shared with the store.
pub(super) type Shared = Arc<Mutex<Option<Replication>>>;

/// Checks every [`CHECK_EVERY`] until the store is gone (`jobs` can no longer be upgraded).
pub(super) async fn watch(
    pool: Pool,
    shared: Shared,
    health: Arc<Health>,
    jobs: mpsc::WeakSender<Job>,
) {
    let mut last: Option<ReplicationMode> = None;
    let mut due = tokio::time::Instant::now();
    loop {
        // An outage that has settled ends (and says so) even on a host that commits nothing.
        let _ = health.error();
        if tokio::time::Instant::now() >= due {
            due += CHECK_EVERY;
            if let Ok(Ok(r)) = tokio::time::timeout(CHECK_EVERY, check(&pool)).await {
                if r.mode == ReplicationMode::Waiting
                    && let Some(w) = r.warning()
                {
                    health.failed(&StoreError::Replication { detail: w });
                }
                if last != Some(r.mode) {
                    note_change(&r, &jobs).await;
                    last = Some(r.mode);
                }
                *shared.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if jobs.upgrade().is_none() {
            return;
        }
    }
}

/// Logs a new mode once; writes event 1010 when it is unsafe.
async fn note_change(r: &Replication, jobs: &mpsc::WeakSender<Job>) {
    let Some(warning) = r.warning() else {
        tracing::info!(mode = %r.summary(), "database replication");
        return;
    };
    tracing::warn!(mode = %r.summary(), %warning, "database replication does not protect acknowledged activations (event 1010)");
    // A commit now would wait for the missing standby itself: the log and the health say it.
    if r.mode == ReplicationMode::Waiting {
        return;
    }
    let Some(jobs) = jobs.upgrade() else { return };
    let event = Event {
        // Restamped with the database's clock by the batcher (X5).
        at: Timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        ),
        event_id: EVENT_REPLICATION,
        level: "warning".into(),
        message: warning,
        data: serde_json::to_value(r).unwrap_or_default(),
    };
    let (job, _wait) = Job::new(Work::Events(vec![event]));
    let _ = jobs.send(job).await;
}
