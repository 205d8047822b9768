//! The host's own events in the event log (R27), beside the 12290 activation events the server
//! writes and the 12293/12294 DNS events.

use std::sync::Arc;

use tally_core::time::{Clock, SystemClock};
use tally_store::{Event, Store};
use tracing::warn;

/// Event id: the host started.
pub const STARTED: u32 = 1000;
/// Event id: the host stopped.
pub const STOPPED: u32 = 1001;
/// Event id: a setting changed (R26).
pub const SETTING_CHANGED: u32 = 1002;
/// Event id: a host key was installed or the host activated with the authority.
pub const KEY: u32 = 1003;
/// Event id: a newer catalog was loaded (R24).
pub const CATALOG_LOADED: u32 = 1004;
/// Event id: the host's clock disagrees with what it is checked against (X5): the database's
/// clock, its clients' times, the last trusted time or the monotonic clock.
pub const CLOCK_SUSPECT: u32 = 1007;
/// Event id: a retention pass was held back because its clock is in doubt (X5).
pub const RETENTION_HELD_BACK: u32 = 1008;

/// Event id: a newer revocation list was loaded (X7).
pub const REVOCATIONS_LOADED: u32 = 1020;
/// Event id: the revocation list revokes this host's own certificate; it answers no
/// activation from now on (X7).
pub const HOST_REVOKED: u32 = 1021;

/// Records one event now. A failure is logged, not returned: an event that cannot be written
/// must not stop the operation it describes.
pub async fn record(
    store: &Arc<dyn Store>,
    event_id: u32,
    level: &str,
    message: &str,
    data: serde_json::Value,
) {
    let event = Event {
        at: SystemClock.now(),
        event_id,
        level: level.to_owned(),
        message: message.to_owned(),
        data,
    };
    if let Err(error) = store.record_events(vec![event]).await {
        warn!(%error, event_id, "cannot record an event");
    }
}
