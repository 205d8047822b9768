//! R27 retention: the event log keeps `event_retention_days` of events, so it cannot fill the
//! disk. Pruning goes through the store's writer (the one writer).

use std::sync::Arc;
use std::time::Duration;

use tally_core::time::{Clock, SystemClock};
use tally_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the log is pruned after the first pass at start.
const PRUNE_EVERY: Duration = Duration::from_secs(86_400);

/// Deletes events older than `days` now, then once a day, until `shutdown`.
pub async fn prune_events_loop(store: Arc<dyn Store>, days: u32, shutdown: CancellationToken) {
    loop {
        let before = SystemClock.now().plus_days(-i64::from(days));
        match store.prune_events(before).await {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, retention_days = days, "old events pruned"),
            Err(error) => warn!(%error, "cannot prune old events"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
