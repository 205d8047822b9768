//! [`HostService`]: the sans-I/O session, the store and the clock, handling one frame at a time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tally_core::host::{HostSession, Outcome};
use tally_core::time::Clock;
use tally_proto::ResultCode;
use tally_store::{PoolCount, Store, StoreError};
use tracing::{debug, warn};

use crate::{ClockWatch, EVENT_ACTIVATION_REQUEST, ServerError};

/// The `tracing` target of the per-request line (event 12290 at debug level): enable it with
/// `--log info,tally::requests=debug`. The durable event log has every request anyway (R27).
pub const REQUEST_LOG_TARGET: &str = "tally::requests";

/// Activation requests answered since the last [`HostService::take_summary`], by outcome: what
/// the host logs once a minute instead of one line per request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Answered with a count at or above the edition's threshold.
    pub activated: u64,
    /// Answered with a count still below the threshold (R2).
    pub below_threshold: u64,
    /// Refused (unknown edition, pool mismatch, edition not covered).
    pub refused: u64,
    /// Answered `storage_failure`: nothing was stored.
    pub storage_failure: u64,
}

impl Summary {
    /// All requests in the summary.
    pub fn total(&self) -> u64 {
        self.activated + self.below_threshold + self.refused + self.storage_failure
    }
}

#[derive(Default)]
struct Tally {
    activated: AtomicU64,
    below_threshold: AtomicU64,
    refused: AtomicU64,
    storage_failure: AtomicU64,
}

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
    tally: Tally,
    clock_watch: ClockWatch,
}

/// How long a request waits for its commit to start before the client is told
/// `storage_failure`: well inside a client's 5–10 s exchange timeout, so a database that hangs
/// never makes clients hang (X3). A request still queued at its deadline is never committed
/// (`Store::commit_within`): what the client is told, the registry and the event log agree.
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
            tally: Tally::default(),
            clock_watch: ClockWatch::default(),
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

    /// Holds `revocations` from now on (X7): relayed to clients, named in every version-2
    /// answer, and, if it revokes this host's certificate, no activation is answered.
    pub fn set_revocations(&self, revocations: Arc<tally_core::revocation::Held>) {
        let mut session = self.session.write().unwrap_or_else(PoisonError::into_inner);
        *session = Arc::new(session.with_revocations(revocations));
    }

    /// Relays `chain` (the encoded root rollover statements, X8) to clients from now on.
    pub fn set_rollover(&self, chain: Arc<Vec<u8>>) {
        let mut session = self.session.write().unwrap_or_else(PoisonError::into_inner);
        *session = Arc::new(session.with_rollover(chain));
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// What the host knows about its clock (X5).
    pub fn clock_watch(&self) -> &ClockWatch {
        &self.clock_watch
    }

    /// The host's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Live counts per pool, as stored (for a fleet: the fleet's counts).
    pub async fn counts(&self) -> Result<Vec<PoolCount>, StoreError> {
        self.store.pool_counts(self.clock.now()).await
    }

    /// The requests answered since the last call, by outcome (and starts counting anew).
    pub fn take_summary(&self) -> Summary {
        let take = |a: &AtomicU64| a.swap(0, Ordering::Relaxed);
        Summary {
            activated: take(&self.tally.activated),
            below_threshold: take(&self.tally.below_threshold),
            refused: take(&self.tally.refused),
            storage_failure: take(&self.tally.storage_failure),
        }
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
                // X5: the clients' reported times are a witness of the real time.
                self.clock_watch.note_client(
                    pending.request.cmid,
                    pending.request.client_time,
                    now,
                );
                let reg = &pending.changes.registry;
                let (cmid, sku, machine) = (reg.cmid, reg.sku, reg.machine_name.clone());
                let threshold = pending.threshold;
                let commit_started = std::time::Instant::now();
                // One outcome per request: the store answers by the deadline unless it took
                // the request into a transaction first, and then with that transaction's
                // outcome (`Store::commit_within`). The backstop only guards against a store
                // that breaks that promise; its answer is no answer.
                let committed = match tokio::time::timeout(
                    self.commit_timeout + tally_store::SETTLE + Duration::from_secs(1),
                    self.store
                        .commit_within(pending.changes.clone(), self.commit_timeout),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(StoreError::OutcomeUnknown {
                        detail: "the store did not answer".into(),
                    }),
                };
                metrics::histogram!("tally_store_commit_seconds")
                    .record(commit_started.elapsed().as_secs_f64());
                if let Err(error @ StoreError::OutcomeUnknown { .. }) = &committed {
                    // Neither "counted" nor "not counted" would be sure: the client hears
                    // nothing, retries, and its retry renews the same entry (R4).
                    debug!(%peer, %cmid, %error, "outcome unknown; closing the connection without an answer");
                    metrics::counter!("tally_requests_total", "result" => "outcome_unknown")
                        .increment(1);
                    self.tally.storage_failure.fetch_add(1, Ordering::Relaxed);
                    return Handled {
                        reply: Vec::new(),
                        close: true,
                    };
                }
                // Results, logs and metrics come from the commit's outcome, never from what was
                // hoped before it.
                let (reply, result, count) = match committed {
                    Ok(counted) => {
                        // X5: the signed host time is the time the store counted at (in a fleet,
                        // the database's clock).
                        pending.response.host_time = counted.at.millis();
                        if counted.clone {
                            // X6: event 1009 is in the commit; the metric for dashboards.
                            metrics::counter!("tally_clones_detected_total").increment(1);
                        }
                        if counted.clone
                            && pending.changes.clone_policy
                                == tally_core::clones::ClonePolicy::Apart
                        {
                            let result = ResultCode::CLONE_DETECTED;
                            (session.seal_failure(&pending, result), result, 0)
                        } else {
                            (
                                session.seal(&pending, counted.count),
                                pending.response.result,
                                counted.count,
                            )
                        }
                    }
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
                let below = result == ResultCode::SUCCESS && count < u32::from(threshold);
                let result_name = if below {
                    "below_threshold"
                } else {
                    result.name().unwrap_or("unknown")
                };
                let bucket = match result {
                    ResultCode::SUCCESS if below => &self.tally.below_threshold,
                    ResultCode::SUCCESS => &self.tally.activated,
                    ResultCode::STORAGE_FAILURE => &self.tally.storage_failure,
                    _ => &self.tally.refused,
                };
                bucket.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tally_requests_total", "result" => result_name).increment(1);
                // R27: event 12290 for each activation request, with machine name and time, is
                // the durable event row written in the commit; this line is its debug echo
                // (one line per request would cost more CPU than the request: ARCHITECTURE.md
                // "Where the time goes"). The host logs a summary once a minute instead.
                debug!(
                    target: REQUEST_LOG_TARGET,
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
