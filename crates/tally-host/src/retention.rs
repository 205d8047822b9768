//! Retention, so that nothing grows without bound (R27, issue 12): the event log keeps
//! `event_retention_days` of events, and the registry keeps machines seen within
//! `registry_retention_days` (by default the 180-day validity plus the 30-day table window: a
//! machine not seen for that long is neither licensed nor counted). Pruning goes through the
//! store's writer (the one writer; in a fleet every host prunes, which is harmless).
//!
//! X5: retention deletes only on a clock nothing contradicts ([`crate::clock`]), with cutoffs on
//! the clock the count runs on (the database's in a fleet). A pass due on a doubted clock is held
//! back, said once (a warning and event 1008), and tried again at each clock check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_server::HostService;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::{Checked, ClockCheck, findings_json};
use crate::events;

/// How often retention runs after the first pass at start.
const PRUNE_EVERY: Duration = Duration::from_secs(86_400);

/// How often the clock is checked (and the store's trusted mark moved forward) while the host
/// runs; a change in what the clients report wakes the check at once.
const CHECK_EVERY: Duration = Duration::from_secs(300);

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

/// Checks the clock every [`CHECK_EVERY`] and prunes events and registry rows now, then once a
/// day, on a clock nothing contradicts, until `shutdown`. `first` is the check the host ran at
/// start (before it recorded anything on its clock).
pub async fn prune_loop(
    service: Arc<HostService>,
    keep: Retention,
    mut check: ClockCheck,
    first: Option<Checked>,
    shutdown: CancellationToken,
) {
    let mut checked = first;
    let mut due = Instant::now();
    let mut held = false;
    loop {
        let outcome = match checked.take() {
            Some(c) => Some(c),
            None => match check.run(&service).await {
                Ok(c) => Some(c),
                Err(error) => {
                    warn!(%error, "cannot check the clock");
                    None
                }
            },
        };
        if let Some(c) = outcome.filter(|_| Instant::now() >= due) {
            if tally_core::clock::may_prune(&c.count_findings) {
                prune(&service, keep, &c).await;
                due = Instant::now() + PRUNE_EVERY;
                held = false;
                set_held_back(&service, None);
            } else {
                set_held_back(&service, c.count_findings.first().copied());
                if !held {
                    hold_back(&service, &c).await;
                    held = true;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = service.clock_watch().changed() => {}
        }
    }
}

async fn prune(service: &HostService, keep: Retention, c: &Checked) {
    let store = service.store();
    let now = c.count_now;
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
}

/// X5: says once why a due pass did not delete.
async fn hold_back(service: &HostService, c: &Checked) {
    for f in &c.count_findings {
        warn!(
            reference = f.reference.name(),
            skew_seconds = f.skew_ms / 1000,
            "retention held back: the clock it would delete on is in doubt (event 1008)"
        );
    }
    events::record(
        service.store(),
        events::RETENTION_HELD_BACK,
        "warning",
        "retention held back: nothing was deleted, because the clock it would run on disagrees with its references; it runs once the clock agrees again",
        findings_json(&c.count_findings, c.count_now),
    )
    .await;
}

fn set_held_back(service: &HostService, reason: Option<tally_core::clock::Finding>) {
    let watch = service.clock_watch();
    let mut status = watch.status();
    if status.retention_held_back != reason {
        status.retention_held_back = reason;
        watch.set(status);
    }
}
