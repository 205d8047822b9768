//! The group-commit engine, one for both backends.
//!
//! A store hands each write to a [`Queue`] and waits (bounded by its deadline, `crate::ticket`).
//! One writer per store (SQLite: a thread of its own; PostgreSQL: a task per host) runs
//! [`run`]: it takes every job already queued (up to [`MAX_BATCH`]), drops the jobs whose
//! requests gave up at their deadline, and has its [`Backend`] commit the rest in one
//! transaction. What is the engine's, so it exists once:
//!
//! - batching: the first job, then what is queued, up to [`MAX_BATCH`]; maintenance that must
//!   run alone ([`Work::Alone`]) ends a batch and runs after it;
//! - deadlines: a job abandoned while queued is never touched; the backend claims the rest
//!   ([`Claim`]) just before it counts them into the transaction it is about to commit;
//! - retries: a failure the backend calls retryable ([`Backend::retryable`]: a serialization
//!   failure, a deadlock) is tried again, up to [`ATTEMPTS`] times, but only while no job was
//!   claimed; after a claim, the jobs' deadlines rule and a failure is final. A failure is
//!   followed by [`Backend::recover`] (drop what the failed transaction left in memory, take a
//!   new connection);
//! - health: every committed batch and every failure reaches `crate::health` (one log line per
//!   outage, `tally_storage_up`), as does a deadline that fires (`crate::ticket`);
//! - the event cap's bookkeeping (`crate::event_cap`): rows written, and a step when due.
//!
//! What the backend does: the transaction (locks, reads, writes, commit, and resolving a lost
//! commit), on the counting diff that [`diff::count`] computes the same way for both.

use std::sync::Arc;
use std::time::Duration;

use tally_core::host::{Changes, Counted};
use tally_core::time::Timestamp;
use tokio::sync::{mpsc, oneshot};

use crate::event_cap::Tracker;
use crate::health::Health;
use crate::ticket::{Deadline, Ticket};
use crate::{Event, StoreError};

pub(crate) mod diff;

/// Most requests committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// Attempts for a batch that hits a retryable failure before any of its jobs was claimed.
pub(crate) const ATTEMPTS: usize = 5;

/// A write for the writer. `A` is the backend's maintenance work that runs alone (outside any
/// batch); a backend without any uses [`std::convert::Infallible`].
pub(crate) enum Work<A> {
    /// One request's changes: counted in the batch's transaction.
    Changes(Box<Changes>),
    /// Events written in the batch's transaction.
    Events(Vec<Event>),
    /// Maintenance (retention, the clock's mark) run on its own.
    Alone(A),
}

impl<A> Work<A> {
    /// Rows this work adds to the event log (at most: a refusal adds none) and its latest time.
    fn event_rows(&self) -> (u64, Timestamp) {
        match self {
            Self::Changes(c) => (1, c.registry.seen_at),
            Self::Events(list) => (
                list.len() as u64,
                list.iter().map(|e| e.at).max().unwrap_or(Timestamp(0)),
            ),
            Self::Alone(_) => (0, Timestamp(0)),
        }
    }
}

/// What the writer answers: the count committed (changes), rows deleted (maintenance), or
/// nothing (events).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) enum Answer {
    #[default]
    Done,
    Counted(Counted),
    Deleted(u64),
}

impl Answer {
    /// The count of a request (events answer a zero count).
    pub(crate) fn counted(self) -> Counted {
        match self {
            Self::Counted(c) => c,
            Self::Done | Self::Deleted(_) => Counted::default(),
        }
    }
}

/// One queued write and the request waiting for it.
pub(crate) struct Job<A> {
    pub(crate) work: Work<A>,
    pub(crate) done: oneshot::Sender<Result<Answer, StoreError>>,
    /// Claimed just before the job is counted into a transaction about to commit; abandoned by
    /// the request at its deadline (`crate::ticket`).
    pub(crate) ticket: Arc<Ticket>,
}

impl<A> Job<A> {
    /// A job nobody waits for with a deadline (a note the writer or a watcher adds).
    pub(crate) fn new(work: Work<A>) -> (Self, oneshot::Receiver<Result<Answer, StoreError>>) {
        let (done, wait) = oneshot::channel();
        let job = Self {
            work,
            done,
            ticket: Arc::default(),
        };
        (job, wait)
    }
}

/// Whether a batch's jobs were claimed: from then on, a failure is not retried.
#[derive(Debug, Default)]
pub(crate) struct Claim {
    taken: bool,
}

impl Claim {
    /// Claims the batch's jobs (see `crate::ticket`): keeps those whose requests still wait;
    /// from here they are this transaction's.
    pub(crate) fn take<A>(&mut self, batch: &mut Vec<Job<A>>) {
        batch.retain(|j| j.ticket.claim());
        self.taken = true;
    }
}

/// A store's transaction, as the engine drives it.
pub(crate) trait Backend {
    /// Maintenance work that runs alone.
    type Alone;

    /// Commits `batch` in one transaction and returns the answers of the jobs left in it, in
    /// order. Calls `claim.take(batch)` just before counting; jobs it drops there were
    /// abandoned and get no answer from here.
    async fn commit(
        &mut self,
        batch: &mut Vec<Job<Self::Alone>>,
        claim: &mut Claim,
    ) -> Result<Vec<Answer>, StoreError>;

    /// Whether a failed batch may be tried again (nothing of it committed, and another try can
    /// succeed: a serialization failure, a deadlock). Asked only while no job was claimed.
    fn retryable(&self, error: &StoreError) -> bool;

    /// After a failed attempt: forget what the transaction left in memory; the next attempt
    /// takes a new connection.
    fn recover(&mut self);

    /// Runs maintenance on its own.
    async fn run_alone(
        &mut self,
        work: Self::Alone,
        cap: &mut Tracker,
    ) -> Result<Answer, StoreError>;

    /// One step of the event cap, after a committed batch (a failure is logged, never fails a
    /// request).
    async fn enforce_event_cap(&mut self, cap: &mut Tracker, now: Timestamp);
}

/// The sending side: what a store holds.
pub(crate) struct Queue<A> {
    jobs: mpsc::Sender<Job<A>>,
    health: Arc<Health>,
}

impl<A> Clone for Queue<A> {
    fn clone(&self) -> Self {
        Self {
            jobs: self.jobs.clone(),
            health: Arc::clone(&self.health),
        }
    }
}

impl<A> Queue<A> {
    /// A queue of `capacity` jobs and its receiving end, for [`run`].
    pub(crate) fn new(capacity: usize, health: Arc<Health>) -> (Self, mpsc::Receiver<Job<A>>) {
        let (jobs, rx) = mpsc::channel(capacity);
        (Self { jobs, health }, rx)
    }

    /// A handle that does not keep the writer running.
    pub(crate) fn downgrade(&self) -> mpsc::WeakSender<Job<A>> {
        self.jobs.downgrade()
    }

    /// Queues `work` and waits for its answer; with a `budget`, gives up when it is spent
    /// unless the writer claimed the job by then (`crate::ticket`). A full queue counts against
    /// the budget too.
    pub(crate) async fn submit(
        &self,
        work: Work<A>,
        budget: Option<Duration>,
    ) -> Result<Answer, StoreError> {
        let deadline = budget.map(Deadline::after);
        let (job, wait) = Job::new(work);
        let ticket = Arc::clone(&job.ticket);
        match deadline {
            Some(d) => match tokio::time::timeout_at(d.at, self.jobs.send(job)).await {
                Ok(sent) => sent.map_err(|_| StoreError::Closed)?,
                Err(_) => {
                    let error = StoreError::Timeout {
                        seconds: d.budget.as_secs_f64(),
                    };
                    self.health.failed(&error);
                    return Err(error);
                }
            },
            None => self.jobs.send(job).await.map_err(|_| StoreError::Closed)?,
        }
        crate::ticket::answer(wait, &ticket, deadline, &self.health).await
    }
}

/// The writer: runs until every sender is gone.
pub(crate) async fn run<B: Backend>(
    mut backend: B,
    mut rx: mpsc::Receiver<Job<B::Alone>>,
    health: Arc<Health>,
    mut cap: Tracker,
) {
    while let Some(first) = rx.recv().await {
        if matches!(first.work, Work::Alone(_)) {
            alone(&mut backend, first, &mut cap).await;
            continue;
        }
        let mut batch = vec![first];
        let mut deferred = None;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) if matches!(job.work, Work::Alone(_)) => {
                    deferred = Some(job);
                    break;
                }
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Requests that gave up while queued: never touched (their clients were answered).
        batch.retain(|j| !j.ticket.abandoned());
        if !batch.is_empty() {
            commit(&mut backend, batch, &health, &mut cap).await;
        }
        if let Some(job) = deferred {
            alone(&mut backend, job, &mut cap).await;
        }
    }
}

/// Runs a job of maintenance on its own and answers it.
async fn alone<B: Backend>(backend: &mut B, job: Job<B::Alone>, cap: &mut Tracker) {
    if let Work::Alone(work) = job.work {
        let _ = job.done.send(backend.run_alone(work, cap).await);
    }
}

/// One batch: attempts, then the answers, health and the event cap.
async fn commit<B: Backend>(
    backend: &mut B,
    mut batch: Vec<Job<B::Alone>>,
    health: &Health,
    cap: &mut Tracker,
) {
    let mut result = Err(StoreError::Closed);
    for attempt in 1..=ATTEMPTS {
        let mut claim = Claim::default();
        result = backend.commit(&mut batch, &mut claim).await;
        let Err(error) = &result else { break };
        // The connection (or what the transaction left in memory) may be what failed.
        backend.recover();
        if attempt < ATTEMPTS && !claim.taken && backend.retryable(error) {
            tracing::debug!(attempt, %error, "batch hit a retryable failure; retrying");
            continue;
        }
        break;
    }
    match result {
        Ok(answers) => {
            if !answers.is_empty() {
                health.ok();
            }
            let (written, now) = batch
                .iter()
                .map(|j| j.work.event_rows())
                .fold((0, Timestamp(0)), |(n, t), (m, u)| (n + m, t.max(u)));
            for (job, answer) in batch.into_iter().zip(answers) {
                // The requester may have gone (connection closed); nothing to tell it.
                let _ = job.done.send(Ok(answer));
            }
            cap.wrote(written);
            if cap.due() {
                backend.enforce_event_cap(cap, now).await;
            }
        }
        Err(error) => {
            health.failed(&error);
            for job in batch {
                let _ = job.done.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
