//! What the running host knows about its clock (X5): the times its clients report (noted on every
//! activation request) and the findings of the host's latest clock check, for status, metrics and
//! events. The decisions are `tally_core::clock`'s; this only keeps their inputs and outputs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use tally_core::clock::{CLOCK_TOLERANCE_MS, ClientTimes, Finding};
use tally_core::time::Timestamp;
use tokio::sync::Notify;
use uuid::Uuid;

/// The latest clock check's result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClockStatus {
    /// What contradicts the host's clock (empty: nothing does).
    pub findings: Vec<Finding>,
    /// When the check ran (the host's clock).
    pub checked_at: Option<Timestamp>,
    /// Why the last retention pass held back, if it did.
    pub retention_held_back: Option<Finding>,
}

impl ClockStatus {
    /// Whether anything contradicts the host's clock.
    pub fn suspect(&self) -> bool {
        !self.findings.is_empty()
    }
}

/// Shared between the request path, the clock check and the admin API.
#[derive(Debug, Default)]
pub struct ClockWatch {
    clients: Mutex<ClientTimes>,
    status: Mutex<ClockStatus>,
    /// Whether the clients' median was beyond the tolerance at the last note.
    clients_disagree: AtomicBool,
    changed: Notify,
}

impl ClockWatch {
    /// Notes the time a client reported in a request the host received at `now`; wakes the clock
    /// check when the clients' median crosses the tolerance either way.
    pub fn note_client(&self, cmid: Uuid, client_time: i64, now: Timestamp) {
        let offset = {
            let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
            clients.note(*cmid.as_bytes(), client_time, now);
            clients.median_offset()
        };
        let disagree = offset.is_some_and(|o| o.abs() > CLOCK_TOLERANCE_MS);
        if self.clients_disagree.swap(disagree, Ordering::Relaxed) != disagree {
            self.changed.notify_one();
        }
    }

    /// The host's clock minus the median time its recent clients reported, once enough did.
    pub fn clients_offset(&self) -> Option<i64> {
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .median_offset()
    }

    /// Records a check's result.
    pub fn set(&self, status: ClockStatus) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }

    /// The latest check's result.
    pub fn status(&self) -> ClockStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until the clients' verdict on the clock changed (or had changed since the last wait).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}
