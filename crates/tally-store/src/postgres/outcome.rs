//! One outcome per batch, even when the connection is lost after `COMMIT` was sent.
//!
//! Each batch writes a random token (`batch_tokens`) in its transaction. When the `COMMIT`'s
//! reply does not come (a cut link, a failover mid-batch, a server that died), the batcher
//! checks on a new connection, bounded by [`RESOLVE_TIMEOUT`]:
//!
//! 1. the old session is ended (`pg_terminate_backend`, which waits for it): a session that
//!    never received the `COMMIT` rolls back and can no longer commit later, when a delayed
//!    packet arrives. A session waiting for a synchronous standby is left alone: ending it would
//!    commit locally what no standby has.
//! 2. the token is looked up. Present: the batch committed, and its clients get their counts.
//!    Absent while the old session is gone: it did not commit, and never will; the clients get
//!    `storage_failure`. Absent while the old session lives on (waiting for a standby), or no
//!    server answered: the outcome is unknown, and the clients get no answer at all
//!    ([`StoreError::OutcomeUnknown`]), never a wrong one.
//!
//! An outcome left unknown is checked again in the background ([`recheck_later`]) every
//! [`RECHECK_EVERY`] for up to [`RECHECK_FOR`], and its final outcome is logged once (with the
//! batch's token), so the on-call admin learns whether the unanswered requests were counted.
//!
//! The session is identified by its process id *and* start time, so a process id reused by
//! another session, or the same number on a promoted standby, is never mistaken for it.

use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use uuid::Uuid;

use super::backend;
use crate::StoreError;

/// How long the batcher waits for a `COMMIT`'s reply before it checks the batch's token.
pub(super) const COMMIT_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long checking the token may take (a new connection included).
pub(super) const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a batch whose outcome stayed unknown is checked again.
pub(super) const RECHECK_EVERY: Duration = Duration::from_secs(5);
/// How long it is checked again before the host gives up and says so.
pub(super) const RECHECK_FOR: Duration = Duration::from_secs(600);

/// A server session: `pg_backend_pid()` and its start in microseconds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Session {
    pid: i32,
    started: i64,
}

const SESSION: &str = "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::int8
     FROM pg_stat_activity WHERE pid = pg_backend_pid()";

const TERMINATE: &str = "SELECT pg_terminate_backend(pid, 1000) FROM pg_stat_activity
     WHERE pid = $1 AND (extract(epoch FROM backend_start) * 1000000)::int8 = $2
       AND wait_event IS DISTINCT FROM 'SyncRep'";

const CHECK: &str = "SELECT EXISTS (SELECT 1 FROM batch_tokens WHERE token = $3),
     EXISTS (SELECT 1 FROM pg_stat_activity
             WHERE pid = $1 AND (extract(epoch FROM backend_start) * 1000000)::int8 = $2)";

/// Token rows are kept a day (a batch's outcome is checked within seconds).
pub(super) const PRUNE_TOKENS: &str = "DELETE FROM batch_tokens WHERE host = $1
     AND at < (extract(epoch FROM clock_timestamp()) * 1000)::int8 - 86400000";

pub(super) const INSERT_TOKEN: &str =
    "INSERT INTO batch_tokens (token, host, at) VALUES ($1, $2, $3)";

impl Session {
    /// The session of `client`'s connection.
    pub(super) async fn of(client: &Object) -> Result<Self, StoreError> {
        let row = client
            .query_one(SESSION, &[])
            .await
            .map_err(backend("identify session"))?;
        Ok(Self {
            pid: row.get(0),
            started: row.get(1),
        })
    }
}

/// What became of a batch whose `COMMIT` got no reply.
#[derive(Debug)]
pub(super) enum Resolved {
    Committed,
    NotCommitted,
    Unknown(String),
}

/// Checks `token` (see the module docs).
pub(super) async fn resolve(pool: &Pool, old: Session, token: Uuid) -> Resolved {
    match tokio::time::timeout(RESOLVE_TIMEOUT, check(pool, old, token)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Resolved::Unknown(format!("could not check the batch's token: {e}")),
        Err(_) => Resolved::Unknown(format!(
            "no server answered the check of the batch's token within {RESOLVE_TIMEOUT:?}"
        )),
    }
}

async fn check(pool: &Pool, old: Session, token: Uuid) -> Result<Resolved, StoreError> {
    let client = pool.get().await.map_err(super::pool_error(pool))?;
    // Ending the old session may be refused (another role's session); the check still tells.
    let (ended, checked) = futures_util::future::join(
        client.query(TERMINATE, &[&old.pid, &old.started]),
        client.query_one(CHECK, &[&old.pid, &old.started, &token]),
    )
    .await;
    if let Err(e) = ended {
        tracing::debug!(error = %e, "could not end the session of a lost commit");
    }
    let row = checked.map_err(backend("check a batch's token"))?;
    let (committed, alive): (bool, bool) = (row.get(0), row.get(1));
    Ok(match (committed, alive) {
        (true, _) => Resolved::Committed,
        (false, false) => Resolved::NotCommitted,
        (false, true) => Resolved::Unknown(
            "the session that sent COMMIT still runs (waiting for a synchronous standby?)".into(),
        ),
    })
}

/// Checks a batch whose outcome stayed unknown again, in the background, until it is known or
/// [`RECHECK_FOR`] has passed, and logs the outcome once. Its `requests` clients got no answer;
/// their retries are renewals (R4), so whatever the outcome, nothing is counted twice.
pub(super) fn recheck_later(pool: Pool, old: Session, token: Uuid, requests: usize) {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        loop {
            tokio::time::sleep(RECHECK_EVERY).await;
            let seconds = started.elapsed().as_secs();
            match resolve(&pool, old, token).await {
                Resolved::Committed => {
                    metrics::counter!("tally_store_outcome_resolved_total", "outcome" => "committed")
                        .increment(1);
                    tracing::warn!(
                        %token,
                        requests,
                        seconds,
                        "a batch whose outcome was unknown committed after all: its requests are counted (their clients got no answer; their retries are renewals)"
                    );
                    return;
                }
                Resolved::NotCommitted => {
                    metrics::counter!("tally_store_outcome_resolved_total", "outcome" => "not_committed")
                        .increment(1);
                    tracing::warn!(
                        %token,
                        requests,
                        seconds,
                        "a batch whose outcome was unknown did not commit: none of its requests is counted"
                    );
                    return;
                }
                Resolved::Unknown(why) if started.elapsed() >= RECHECK_FOR => {
                    tracing::error!(
                        %token,
                        requests,
                        %why,
                        "a batch's outcome is still unknown; look for its token in the table batch_tokens once the database is back"
                    );
                    return;
                }
                Resolved::Unknown(_) => {}
            }
        }
    });
}
