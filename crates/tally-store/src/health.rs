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
//!
//! Queries outside the group commit (a fleet store's reads for the dashboard, status, registry
//! and events, and its direct maintenance writes) report too: a connection they cannot get (the
//! pool exhausted, the database unreachable) is a failure like a commit's ([`Health::query_failed`]).
//! A query that gets its connection ends only an outage that queries alone started
//! ([`Health::query_ok`]): once a commit has failed in an outage, only a commit ends it, because
//! reads can work while every commit fails (a lock held by a stalled host, a synchronous standby
//! gone), and "up" must mean that clients are counted.

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
    /// if no further commit comes: an idle host is not "down" forever). A query's success counts
    /// here only while `commits_failed` is false.
    committed_since: bool,
    /// A commit (or a request waiting for one) failed in this outage: only a commit ends it.
    commits_failed: bool,
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

/// Which side of the store saw a failure or a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// The group commit: a commit, or a request waiting for one.
    Commit,
    /// A query outside it (reads; a fleet store's direct maintenance writes).
    Query,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::Query => "query",
        }
    }
}

impl Health {
    /// A commit succeeded.
    pub(crate) fn ok(&self) {
        self.worked(Side::Commit);
    }

    /// A query outside the group commit got its connection: ends an outage only if no commit
    /// failed in it (see the module docs).
    pub(crate) fn query_ok(&self) {
        self.worked(Side::Query);
    }

    fn worked(&self, side: Side) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(outage) = down.as_mut() {
            if side == Side::Query && outage.commits_failed {
                return;
            }
            outage.committed_since = true;
            if outage.over() {
                end(&mut down);
            }
        }
    }

    /// A commit failed, or a request gave up on its commit, with `error`.
    pub(crate) fn failed(&self, error: &StoreError) {
        self.failure(error, Side::Commit);
    }

    /// A query outside the group commit could not get a connection (the pool exhausted, the
    /// database unreachable), with `error`.
    pub(crate) fn query_failed(&self, error: &StoreError) {
        self.failure(error, Side::Query);
    }

    fn failure(&self, error: &StoreError, side: Side) {
        let mut down = self.down.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match down.as_mut() {
            None => {
                tracing::error!(
                    %error,
                    during = side.name(),
                    "storage failing: clients get storage_failure and nothing is counted until it works again (logged once per outage)"
                );
                metrics::counter!("tally_storage_outages_total").increment(1);
                *down = Some(Outage {
                    error: error.to_string(),
                    since: now,
                    last_failure: now,
                    failures: 1,
                    committed_since: false,
                    commits_failed: side == Side::Commit,
                });
            }
            Some(outage) => {
                tracing::debug!(%error, during = side.name(), "storage still failing");
                outage.error = error.to_string();
                outage.last_failure = now;
                outage.failures += 1;
                outage.committed_since = false;
                outage.commits_failed |= side == Side::Commit;
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

    fn settle(h: &Health) {
        if let Some(o) = h
            .down
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            o.last_failure -= SETTLE;
        }
    }

    // Issue 21 part 3: a read that works does not say "up" while commits fail; an outage that
    // only reads saw ends with a read.
    #[test]
    fn a_query_ends_only_an_outage_no_commit_failed_in() {
        let h = Health::default();
        let pool = StoreError::Backend {
            operation: "connect",
            source: std::sync::Arc::new(std::io::Error::other("connection pool exhausted")),
        };
        h.query_failed(&pool);
        assert!(h.error().is_some_and(|e| e.contains("pool")));
        h.query_ok();
        assert!(h.error().is_some(), "not before it settled");
        settle(&h);
        h.query_ok();
        assert!(h.error().is_none(), "a read-only outage ends with a read");

        h.failed(&StoreError::Timeout { seconds: 3.0 });
        h.query_failed(&pool);
        settle(&h);
        h.query_ok();
        assert!(
            h.error().is_some(),
            "reads work, commits failed: still down"
        );
        h.ok();
        assert!(h.error().is_none(), "a commit ends it");
    }
}
