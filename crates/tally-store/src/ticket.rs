//! One outcome per request: the deadline of a queued commit, shared by both backends' writers.
//!
//! A request waits for its commit until its deadline (3 s by default, `tally-server`). What
//! happens at the deadline must be the same in every record: the client's answer, the registry
//! and event 12290. So a job carries a [`Ticket`] that the writer *claims* just before it counts
//! the job into a transaction it is about to commit, and that the waiting request *abandons*
//! when its deadline passes first. Exactly one of the two wins (one atomic swap):
//!
//! - abandoned: the writer skips the job; nothing of it is counted or stored, and the client is
//!   told `storage_failure`. A job whose deadline passed is never committed.
//! - claimed: the request waits for the transaction's outcome, whatever the deadline says. The
//!   writer bounds that wait (the commit's reply timeout, then a check of the batch's token on a
//!   new connection: `postgres/outcome.rs`); if the outcome stays unknown, the answer is
//!   [`StoreError::OutcomeUnknown`] and the client gets no answer at all rather than a wrong one
//!   (its retry is a renewal, R4, and counts nothing twice).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::StoreError;
use crate::health::Health;

/// How long a claimed job may still take after its deadline before its outcome is reported as
/// unknown: the commit's reply timeout plus the check of the batch's token on a new connection.
/// Well under a client's exchange timeout for the usual 3 s deadline plus this.
pub const SETTLE: Duration = Duration::from_secs(6);

const QUEUED: u8 = 0;
const CLAIMED: u8 = 1;
const ABANDONED: u8 = 2;

/// Whether a queued job will be committed (claimed by the writer) or never (abandoned by the
/// request at its deadline).
#[derive(Debug, Default)]
pub(crate) struct Ticket(AtomicU8);

impl Ticket {
    /// The writer takes the job into the transaction it is about to commit. `false`: the
    /// request gave up first; leave the job out.
    pub(crate) fn claim(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
            .map_or_else(|now| now == CLAIMED, |_| true)
    }

    /// The request gives up at its deadline. `false`: the writer claimed it first; wait for the
    /// outcome.
    fn abandon(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .map_or_else(|now| now == ABANDONED, |_| true)
    }

    /// Whether the request already gave up (the writer drops such jobs before any I/O).
    pub(crate) fn abandoned(&self) -> bool {
        self.0.load(Ordering::Acquire) == ABANDONED
    }
}

/// Waits for a writer's answer on `wait`, giving up at `deadline` unless the writer claimed the
/// job by then (see the module docs). A deadline that fires is reported to `health`: a store
/// that answers nothing in time is down, whatever its last commit said.
pub(crate) async fn answer<T>(
    wait: oneshot::Receiver<Result<T, StoreError>>,
    ticket: &Arc<Ticket>,
    deadline: Option<Deadline>,
    health: &Health,
) -> Result<T, StoreError> {
    let Some(Deadline {
        at: deadline,
        budget,
    }) = deadline
    else {
        return wait.await.map_err(|_| StoreError::Closed)?;
    };
    tokio::pin!(wait);
    if let Ok(r) = tokio::time::timeout_at(deadline, &mut wait).await {
        return r.map_err(|_| StoreError::Closed)?;
    }
    if ticket.abandon() {
        let error = StoreError::Timeout {
            seconds: budget.as_secs_f64(),
        };
        health.failed(&error);
        metrics::counter!("tally_store_deadline_expired_total").increment(1);
        return Err(error);
    }
    // Claimed: its transaction is on its way; its outcome is the answer.
    match tokio::time::timeout_at(deadline + SETTLE, &mut wait).await {
        Ok(r) => r.map_err(|_| StoreError::Closed)?,
        Err(_) => Err(StoreError::OutcomeUnknown {
            detail: "the writer did not report the transaction's outcome in time".into(),
        }),
    }
}

/// When a request stops waiting for a commit that has not started: `budget` after it asked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    pub(crate) budget: Duration,
}

impl Deadline {
    /// `budget` from now.
    pub(crate) fn after(budget: Duration) -> Self {
        Self {
            at: Instant::now() + budget,
            budget,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_and_abandon_exclude_each_other() {
        let t = Ticket::default();
        assert!(t.claim());
        assert!(
            t.claim(),
            "claiming twice (a retried batch) keeps it claimed"
        );
        assert!(!t.abandon());
        let t = Ticket::default();
        assert!(t.abandon());
        assert!(t.abandoned());
        assert!(!t.claim(), "an abandoned job is never committed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_abandons_an_unclaimed_job_and_marks_the_store_down() {
        let health = Health::default();
        let ticket = Arc::new(Ticket::default());
        let (_done, wait) = oneshot::channel::<Result<u32, StoreError>>();
        let r = answer(
            wait,
            &ticket,
            Some(Deadline::after(Duration::from_secs(3))),
            &health,
        )
        .await;
        assert!(matches!(r, Err(StoreError::Timeout { .. })), "{r:?}");
        assert!(ticket.abandoned());
        assert!(health.error().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_claimed_job_waits_for_its_outcome_past_the_deadline() {
        let health = Health::default();
        let ticket = Arc::new(Ticket::default());
        let (done, wait) = oneshot::channel::<Result<u32, StoreError>>();
        assert!(ticket.claim());
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            let _ = done.send(Ok(7));
        });
        let r = answer(
            wait,
            &ticket,
            Some(Deadline::after(Duration::from_secs(3))),
            &health,
        )
        .await;
        assert_eq!(r.ok(), Some(7));
        assert!(health.error().is_none());
        writer.await.ok();
    }
}
