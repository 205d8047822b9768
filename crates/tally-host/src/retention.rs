//! Retention, so that nothing grows without bound (R27, issue 12): the event log keeps
//! `event_retention_days` of events, and the registry keeps machines seen within
//! `registry_retention_days` (by default the 180-day validity plus the 30-day table window: a
//! machine not seen for that long is neither licensed nor counted). Pruning goes through the
//! store's writer (the one writer; in a fleet every host prunes, which is harmless).

use std::sync::Arc;
use std::time::Duration;

use tally_core::time::{Clock, SystemClock};
use tally_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often retention runs after the first pass at start.
const PRUNE_EVERY: Duration = Duration::from_secs(86_400);

/// Default registry retention: 180 days of validity (R7) plus the 30-day table (R4).
pub const DEFAULT_REGISTRY_RETENTION_DAYS: u32 = 210;

/// How long each kind of record is kept, in days.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Events (R27).
    pub event_days: u32,
    /// Registry rows (R6), by last request.
    pub registry_days: u32,
}

/// Prunes events and registry rows now, then once a day, until `shutdown`.
pub async fn prune_loop(store: Arc<dyn Store>, keep: Retention, shutdown: CancellationToken) {
    loop {
        let now = SystemClock.now();
        match store
            .prune_events(now.plus_days(-i64::from(keep.event_days)))
            .await
        {
            Ok(0) => {}
            Ok(deleted) => info!(
                deleted,
                retention_days = keep.event_days,
                "old events pruned"
            ),
            Err(error) => warn!(%error, "cannot prune old events"),
        }
        match store
            .prune_registry(now.plus_days(-i64::from(keep.registry_days)))
            .await
        {
            Ok(0) => {}
            Ok(deleted) => info!(
                deleted,
                retention_days = keep.registry_days,
                "machines not seen within the registry retention removed from the registry"
            ),
            Err(error) => warn!(%error, "cannot prune the registry"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
