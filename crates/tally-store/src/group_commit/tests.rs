//! The engine's policy on a backend whose failures the test chooses (the transaction itself is
//! tested on real SQLite and PostgreSQL by the conformance suite).

use std::collections::VecDeque;
use std::sync::Arc;

use super::*;

/// Fails with the next scripted error (claiming first when told), then commits.
struct Scripted {
    failures: VecDeque<(bool, StoreError)>,
    attempts: usize,
}

fn serialization() -> StoreError {
    StoreError::Backend {
        operation: "lock pool",
        source: Arc::new(std::io::Error::other("retryable")),
    }
}

impl Backend for Scripted {
    type Alone = u64;

    async fn commit(
        &mut self,
        batch: &mut Vec<Job<u64>>,
        claim: &mut Claim,
    ) -> Result<Vec<Answer>, StoreError> {
        self.attempts += 1;
        if let Some((claim_first, error)) = self.failures.pop_front() {
            if claim_first {
                claim.take(batch);
            }
            return Err(error);
        }
        claim.take(batch);
        Ok(batch.iter().map(|_| Answer::Done).collect())
    }

    fn retryable(&self, error: &StoreError) -> bool {
        matches!(error, StoreError::Backend { .. })
    }

    fn recover(&mut self) {}

    async fn run_alone(&mut self, work: u64, _: &mut Tracker) -> Result<Answer, StoreError> {
        Ok(Answer::Deleted(work))
    }

    async fn enforce_event_cap(&mut self, _: &mut Tracker, _: Timestamp) {}
}

async fn one_job(failures: Vec<(bool, StoreError)>) -> (Result<Answer, StoreError>, Arc<Health>) {
    let health = Arc::new(Health::default());
    let (queue, rx) = Queue::new(8, Arc::clone(&health));
    let backend = Scripted {
        failures: failures.into(),
        attempts: 0,
    };
    let engine = tokio::spawn(run(
        backend,
        rx,
        Arc::clone(&health),
        Tracker::new(0, Arc::default()),
    ));
    let answer = queue.submit(Work::Events(Vec::new()), None).await;
    drop(queue);
    let _ = engine.await;
    (answer, health)
}

#[tokio::test]
async fn a_retryable_failure_before_the_claim_is_tried_again() {
    let (answer, health) = one_job(vec![(false, serialization()), (false, serialization())]).await;
    assert!(matches!(answer, Ok(Answer::Done)), "{answer:?}");
    assert!(health.error().is_none());
}

#[tokio::test]
async fn a_failure_after_the_claim_is_final_and_reaches_health() {
    let (answer, health) = one_job(vec![(true, serialization())]).await;
    assert!(
        matches!(answer, Err(StoreError::Backend { .. })),
        "{answer:?}"
    );
    assert!(health.error().is_some(), "the store is down");
}

#[tokio::test]
async fn retries_stop_after_the_last_attempt() {
    let failures = (0..ATTEMPTS).map(|_| (false, serialization())).collect();
    let (answer, _) = one_job(failures).await;
    assert!(answer.is_err(), "{answer:?}");
}

#[tokio::test]
async fn maintenance_runs_alone_and_is_answered() {
    let health = Arc::new(Health::default());
    let (queue, rx) = Queue::new(8, Arc::clone(&health));
    let backend = Scripted {
        failures: VecDeque::new(),
        attempts: 0,
    };
    let engine = tokio::spawn(run(backend, rx, health, Tracker::new(0, Arc::default())));
    let answer = queue.submit(Work::Alone(42), None).await;
    assert!(matches!(answer, Ok(Answer::Deleted(42))), "{answer:?}");
    drop(queue);
    let _ = engine.await;
}
