//! [`HostService`]: the sans-I/O session, the store and the clock, handling one frame at a time.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tally_core::host::{HostSession, Outcome};
use tally_core::time::Clock;
use tally_proto::ResultCode;
use tally_store::{PoolCount, Store, StoreError};
use tracing::{debug, info, warn};

use crate::{EVENT_ACTIVATION_REQUEST, ServerError};

/// What to send back for one frame.
#[derive(Debug)]
pub struct Handled {
    /// The reply frame.
    pub reply: Vec<u8>,
    /// Whether to close the connection after sending it.
    pub close: bool,
}

/// The host: session logic, durable store (which counts, see [`Store::commit`]), clock.
pub struct HostService {
    session: std::sync::RwLock<Arc<HostSession>>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    commit_timeout: Duration,
}

/// How long a request waits for its commit before the client is told `storage_failure`: well
/// inside a client's 5–10 s exchange timeout, so a database that hangs never makes clients hang
/// (X3). A commit that completes after this is durable but unacknowledged; the client's retry
/// renews the same entry (R4), so nothing is counted twice.
pub const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(3);

impl std::fmt::Debug for HostService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostService")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl HostService {
    /// Builds the service, checking that the store answers.
    pub async fn open(
        session: Arc<HostSession>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServerError> {
        store.pool_counts(clock.now()).await?;
        Ok(Self {
            session: std::sync::RwLock::new(session),
            store,
            clock,
            commit_timeout: DEFAULT_COMMIT_TIMEOUT,
        })
    }

    /// The same service giving commits `timeout` (see [`DEFAULT_COMMIT_TIMEOUT`]).
    pub fn with_commit_timeout(mut self, timeout: Duration) -> Self {
        self.commit_timeout = timeout;
        self
    }

    /// The session in force (cheap: an `Arc` clone).
    pub fn session(&self) -> Arc<HostSession> {
        Arc::clone(&self.session.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Sends `intervals` from now on (R9, R26).
    pub fn set_intervals(&self, intervals: tally_core::host::Intervals) {
        let mut session = self.session.write().unwrap_or_else(PoisonError::into_inner);
        *session = Arc::new(session.with_intervals(intervals));
    }

    /// Serves `catalog` from now on (R24); requests in flight finish with the old one.
    pub fn set_catalog(&self, catalog: Arc<tally_core::Catalog>) {
        let mut session = self.session.write().unwrap_or_else(PoisonError::into_inner);
        *session = Arc::new(session.with_catalog(catalog));
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Live counts per pool, as stored (for a fleet: the fleet's counts).
    pub async fn counts(&self) -> Result<Vec<PoolCount>, StoreError> {
        self.store.pool_counts(self.clock.now()).await
    }

    /// Handles one frame from `peer`. The reply to an activation is sent only after its
    /// changes are durable; if they cannot be stored, the reply says so and counts nothing.
    pub async fn handle(&self, frame: &[u8], peer: SocketAddr) -> Handled {
        let started = std::time::Instant::now();
        let handled = self.handle_inner(frame, peer).await;
        metrics::histogram!("tally_request_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        handled
    }

    async fn handle_inner(&self, frame: &[u8], peer: SocketAddr) -> Handled {
        let now = self.clock.now();
        let session = self.session();
        match session.handle(frame, now) {
            Outcome::Reply(reply) => Handled {
                reply,
                close: false,
            },
            Outcome::Close { reply, reason } => {
                metrics::counter!("tally_requests_total", "result" => "malformed_request")
                    .increment(1);
                warn!(%peer, %reason, "malformed request; closing connection");
                Handled { reply, close: true }
            }
            Outcome::Activation(mut pending) => {
                pending.changes.registry.peer = Some(peer.to_string());
                let reg = &pending.changes.registry;
                let (cmid, sku, machine) = (reg.cmid, reg.sku, reg.machine_name.clone());
                let threshold = pending.threshold;
                let commit_started = std::time::Instant::now();
                let committed = match tokio::time::timeout(
                    self.commit_timeout,
                    self.store.commit(pending.changes.clone()),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(StoreError::Timeout {
                        seconds: self.commit_timeout.as_secs_f64(),
                    }),
                };
                metrics::histogram!("tally_store_commit_seconds")
                    .record(commit_started.elapsed().as_secs_f64());
                // Results, logs and metrics come from the commit's outcome, never from what was
                // hoped before it.
                let (reply, result, count) = match committed {
                    Ok(counted) => (
                        session.seal(&pending, counted.count),
                        pending.response.result,
                        counted.count,
                    ),
                    Err(error) => {
                        // The store logs the outage once; per request only at debug, so a down
                        // database or a flood cannot fill the log.
                        debug!(%peer, %error, %cmid, "could not store activation; answering storage_failure");
                        let result = ResultCode::STORAGE_FAILURE;
                        (session.seal_failure(&pending, result), result, 0)
                    }
                };
                // A success whose count is still below the edition's threshold (R2) is not an
                // activation: logs and metrics call it what it is.
                let result_name = if result == ResultCode::SUCCESS && count < u32::from(threshold) {
                    "below_threshold"
                } else {
                    result.name().unwrap_or("unknown")
                };
                metrics::counter!("tally_requests_total", "result" => result_name).increment(1);
                // R27: event 12290 for each activation request, with machine name and time.
                info!(
                    event_id = EVENT_ACTIVATION_REQUEST,
                    machine = %machine,
                    %cmid,
                    %sku,
                    result = result_name,
                    count,
                    threshold,
                    %peer,
                    time = %now,
                    "activation request"
                );
                Handled {
                    reply,
                    close: false,
                }
            }
        }
    }
}
