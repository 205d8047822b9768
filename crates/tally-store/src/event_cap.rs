//! The event log's size cap (R27, issue 21 "bounded everywhere"): retention keeps
//! `event_retention_days` of events, and this keeps at most [`StoreOptions::event_cap`] rows
//! whatever arrives within those days (one peer with a public setup key and random CMIDs writes
//! one 12290 row per request).
//!
//! Cheap at any size, in the writer (SQLite's writer thread, PostgreSQL's batcher), never a
//! `count(*)`: event ids only grow, so `max(id) - min(id) + 1` (two index probes) bounds the
//! number of rows from above. After every `check_every` rows written (a hundredth of the cap,
//! at most [`MAX_CHECK_EVERY`]) the writer reads that span and, when it is over the cap, deletes
//! the oldest ids, at most [`PRUNE_STEP`] rows per transaction, continuing after the next batch
//! until the span is back at the cap. The cap deletes by id, not by time, so unlike retention it
//! is not held back while the clock is in doubt (X5): no clock decides what it deletes. The table therefore holds at most the cap plus one check's
//! worth of rows (per host in a fleet), and sometimes a little less than the cap (gaps in the ids
//! count as rows). In a fleet one host prunes at a time (a transaction-level advisory lock; a host
//! that does not get it leaves the work to the one that has it).
//!
//! Reaching the cap starts an *episode*: event [`EVENT_EVENTS_AT_CAP`] and one warning, once
//! (per host, per start of the host); [`EventCapStatus::at_cap`] (`tally_events_at_cap`) says so
//! until a check finds the table below the cap again (retention, a raised cap), which ends the
//! episode with one info line. [`EventCapStatus::pruned_total`] (`tally_events_pruned_total`)
//! counts the rows deleted for the cap.
//!
//! [`StoreOptions::event_cap`]: crate::StoreOptions::event_cap

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;
use tally_core::time::Timestamp;

use crate::Event;

/// Default [`crate::StoreOptions::event_cap`]: five million rows. An activation event (12290)
/// takes about 410 bytes of SQLite with its indexes (measured: 200,000 rows with realistic
/// names, UUIDs and peers), so about 2 GB (PostgreSQL a little more); at 100,000 requests a day
/// that is 50 days, a little less than the 90 days of retention.
pub const DEFAULT_EVENT_CAP: u64 = 5_000_000;

/// Event id logged once when the event log reaches its cap and its oldest rows start to go.
pub const EVENT_EVENTS_AT_CAP: u32 = 1011;

/// Most rows deleted in one transaction for the cap (the rest after the next batch). Small, so
/// that a step holds the writer for tens of milliseconds, not the commit deadline (deleting
/// 10,000 rows took 0.4 s in a rollback-journal SQLite file); larger than a batch (512), so
/// pruning outpaces any flood while over the cap.
pub const PRUNE_STEP: u64 = 2_000;

/// Most rows written between two checks of the span.
pub const MAX_CHECK_EVERY: u64 = 10_000;

/// The advisory lock that lets one host of a fleet prune for the cap at a time.
pub const EVENT_CAP_LOCK: i64 = 0x7461_6c6c_7903; // "tally" + 3

/// What the cap did, for `/metrics`, the dashboard and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventCapStatus {
    /// The rows kept at most.
    pub cap: u64,
    /// Whether the last check found the log at its cap (the oldest events are being deleted).
    pub at_cap: bool,
    /// Rows this store deleted for the cap since it was opened.
    pub pruned_total: u64,
}

/// The part of the cap's state that readers see.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    at_cap: AtomicBool,
    pruned: AtomicU64,
    /// Set by retention: check at the next batch (the episode may be over).
    due: AtomicBool,
}

impl Shared {
    pub(crate) fn status(&self, cap: u64) -> EventCapStatus {
        EventCapStatus {
            cap,
            at_cap: self.at_cap.load(Ordering::Relaxed),
            pruned_total: self.pruned.load(Ordering::Relaxed),
        }
    }

    /// Asks the writer to check at its next batch.
    pub(crate) fn check_soon(&self) {
        self.due.store(true, Ordering::Relaxed);
    }
}

/// What a check decided: delete the ids below `below`, and write `event` (the episode's start)
/// in the same transaction.
#[derive(Debug, PartialEq)]
pub(crate) struct Prune {
    pub(crate) below: i64,
    pub(crate) event: Option<Event>,
}

/// The writer's side of the cap (sans-I/O: the backends read the span and delete).
#[derive(Debug)]
pub(crate) struct Tracker {
    cap: u64,
    check_every: u64,
    since_check: u64,
    /// Over the cap after the last step: continue at the next batch.
    more: bool,
    shared: Arc<Shared>,
}

impl Tracker {
    /// A tracker that checks at its first batch (a lowered cap applies at once).
    pub(crate) fn new(cap: u64, shared: Arc<Shared>) -> Self {
        let cap = cap.max(1);
        Self {
            cap,
            check_every: (cap / 100).clamp(1, MAX_CHECK_EVERY),
            since_check: 0,
            more: true,
            shared,
        }
    }

    /// Counts rows written by a committed batch.
    pub(crate) fn wrote(&mut self, rows: u64) {
        self.since_check = self.since_check.saturating_add(rows);
    }

    /// Whether the writer should read the span now.
    pub(crate) fn due(&self) -> bool {
        self.more || self.since_check >= self.check_every || self.shared.due.load(Ordering::Relaxed)
    }

    /// Decides on the span `(min id, max id)` of the table (`None`: empty), at `now`.
    pub(crate) fn plan(&mut self, span: Option<(i64, i64)>, now: Timestamp) -> Option<Prune> {
        self.since_check = 0;
        self.shared.due.store(false, Ordering::Relaxed);
        let cap = i64::try_from(self.cap).unwrap_or(i64::MAX);
        let (lo, excess) = span.map_or((0, 0), |(lo, hi)| (lo, (hi - lo + 1) - cap));
        if excess <= 0 {
            self.more = false;
            if self.shared.at_cap.swap(false, Ordering::Relaxed) {
                tracing::info!(cap = self.cap, "the event log is below its cap again");
            }
            return None;
        }
        let starting = !self.shared.at_cap.load(Ordering::Relaxed);
        // The episode's event takes a row too.
        let want = excess + i64::from(starting);
        let step = want.min(i64::try_from(PRUNE_STEP).unwrap_or(i64::MAX));
        self.more = want > step;
        Some(Prune {
            below: lo + step,
            event: starting.then(|| at_cap_event(now, self.cap)),
        })
    }

    /// Records what a [`Prune`] deleted, once its transaction committed.
    pub(crate) fn pruned(&mut self, deleted: u64, started: bool) {
        self.shared.pruned.fetch_add(deleted, Ordering::Relaxed);
        if started && !self.shared.at_cap.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                cap = self.cap,
                "the event log reached its cap: the oldest events are deleted to make room (event 1011); raise event_cap or shorten event_retention_days, and see who writes so many (tally host events)"
            );
        }
    }

    /// After a failed step: try again after the next batch.
    pub(crate) fn failed(&mut self) {
        self.more = true;
    }
}

fn at_cap_event(at: Timestamp, cap: u64) -> Event {
    Event {
        at,
        event_id: EVENT_EVENTS_AT_CAP,
        level: "warning".into(),
        message: format!(
            "the event log holds {cap} events, its cap: the oldest events are deleted to make room, so it keeps less than event_retention_days; raise event_cap or shorten the retention, and look for whoever writes so many events"
        ),
        data: serde_json::json!({ "cap": cap }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_cap_deletes_the_oldest_in_steps_and_logs_one_episode() {
        let shared = Arc::new(Shared::default());
        let mut t = Tracker::new(100, Arc::clone(&shared));
        assert!(t.due(), "checks at the first batch");
        assert_eq!(t.plan(Some((1, 100)), Timestamp(5)), None);
        assert!(!t.due());
        t.wrote(1);
        assert!(t.due(), "a cap of 100 checks after every row");
        let p = t.plan(Some((1, 101)), Timestamp(5)).expect("over");
        assert_eq!(p.below, 3, "one over the cap, one for the episode's event");
        assert!(p.event.is_some());
        t.pruned(2, true);
        assert!(shared.status(100).at_cap);
        t.wrote(1);
        let p = t.plan(Some((3, 103)), Timestamp(6)).expect("over");
        assert_eq!((p.below, p.event), (4, None), "one event per episode");
        t.pruned(1, false);
        assert_eq!(t.plan(Some((50, 103)), Timestamp(7)), None);
        assert!(!shared.status(100).at_cap, "retention ended the episode");
        assert_eq!(shared.status(100).pruned_total, 3);
    }

    #[test]
    fn a_large_excess_goes_in_bounded_steps() {
        let mut t = Tracker::new(1_000, Arc::new(Shared::default()));
        let p = t.plan(Some((1, 1_000_000)), Timestamp(0)).expect("over");
        assert_eq!(p.below, 1 + PRUNE_STEP as i64);
        assert!(t.due(), "continues after the next batch");
    }
}
