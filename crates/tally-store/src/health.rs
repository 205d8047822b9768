//! The store's health, as its writer and its requests see it, logged once per outage.
//!
//! Everything that makes a client hear `storage_failure` reaches this one place: a commit that
//! failed (database down, link cut), a request whose deadline passed before any commit took it
//! (`ticket.rs`: the database hangs, a pool lock is held by a stalled host, the connection pool
//! is exhausted), a lock wait over the limit, an outcome that stayed unknown. While any of these
//! keeps happening the store is down: `Store::storage_error` says why, `/metrics` shows
//! `tally_storage_up 0` and the dashboard's storage line says "down".
//!
//! A database that is down fails every request; one log line per request would bury the
//! on-call admin (and let a flood of clients fill the log). The first failure of an outage is
//! logged as an error with its cause, the end of the outage once as info (with its length),
//! and what lies between only at debug. An outage ends with a successful commit at least
//! [`SETTLE`] after the last failure, so an overloaded store that commits some batches while
//! other requests expire stays "down" instead of logging a pair of lines per batch.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::StoreError;

/// How long after its last failure a store must commit again before it counts as up.
pub const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Outage {
    error: String,
    since: Instant,
    last_failure: Instant,
    failures: u64,
    /// A commit succeeded after the last failure (the outage ends once that has settled, even
    /// if no further commit comes: an idle host is not "down" forever).
    committed_since: bool,
}

impl Outage {
    fn over(&self) -> bool {
        self.committed_since && self.last_failure.elapsed() >= SETTLE
    }
}

fn end(down: &mut Option<Outage>) {
    if let Some(outage) = down.take() {
        tracing::info!(
            error = %outage.error,
            seconds = outage.since.elapsed().as_secs(),
            failures = outage.failures,
            "storage works again; commits resume"
        );
    }
}

/// Up, or down with the error that keeps it down.
#[derive(Debug, Default)]
pub(crate) struct Health {
    down: Mutex<Option<Outage>>,
}

impl Health {
    /// A commit succeeded.
    pub(crate) fn ok(&self) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(outage) = down.as_mut() {
            outage.committed_since = true;
            if outage.over() {
                end(&mut down);
            }
        }
    }

    /// A commit failed, or a request gave up on its commit, with `error`.
    pub(crate) fn failed(&self, error: &StoreError) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match down.as_mut() {
            None => {
                tracing::error!(
                    %error,
                    "storage failing: clients get storage_failure and nothing is counted until it works again (logged once per outage)"
                );
                metrics::counter!("tally_storage_outages_total").increment(1);
                *down = Some(Outage {
                    error: error.to_string(),
                    since: now,
                    last_failure: now,
                    failures: 1,
                    committed_since: false,
                });
            }
            Some(outage) => {
                tracing::debug!(%error, "storage still failing");
                outage.error = error.to_string();
                outage.last_failure = now;
                outage.failures += 1;
                outage.committed_since = false;
            }
        }
    }

    /// The error of the outage in progress, if any.
    pub(crate) fn error(&self) -> Option<String> {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if down.as_ref().is_some_and(Outage::over) {
            end(&mut down);
        }
        down.as_ref().map(|o| o.error.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_ends_only_after_it_settled() {
        let h = Health::default();
        h.ok();
        assert!(h.error().is_none());
        h.failed(&StoreError::Timeout { seconds: 3.0 });
        assert!(h.error().is_some_and(|e| e.contains("3 s")));
        h.ok();
        assert!(
            h.error().is_some(),
            "a commit right after a failure does not end it"
        );
        if let Some(o) = h
            .down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            o.last_failure -= SETTLE;
        }
        h.ok();
        assert!(h.error().is_none());
    }
}
