//! The store's health as the last commit left it, logged once per outage.
//!
//! A database that is down fails every request; one log line per request would bury the
//! on-call admin (and let a flood of clients fill the log). The batcher reports each outcome
//! here; the first failure of an outage is logged as an error with its cause, the end of the
//! outage once as info, and what lies between only at debug.

use std::sync::{Mutex, PoisonError};

use crate::StoreError;

/// Up, or down with the error that took it down.
#[derive(Debug, Default)]
pub(crate) struct Health {
    down: Mutex<Option<String>>,
}

impl Health {
    /// A commit succeeded.
    pub(crate) fn ok(&self) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(error) = down.take() {
            tracing::info!(%error, "storage works again; commits resume");
        }
    }

    /// A commit failed with `error`.
    pub(crate) fn failed(&self, error: &StoreError) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if down.is_none() {
            tracing::error!(
                %error,
                "storage failing: clients get storage_failure and nothing is counted until it works again (logged once per outage)"
            );
        } else {
            tracing::debug!(%error, "storage still failing");
        }
        *down = Some(error.to_string());
    }

    /// The error of the outage in progress, if any.
    pub(crate) fn error(&self) -> Option<String> {
        self.down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
