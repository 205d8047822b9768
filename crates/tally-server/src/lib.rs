//! The host's network layer: a thin tokio loop around the sans-I/O [`HostSession`].
//!
//! For each connection: read one frame (length checked before anything is read into the
//! buffer), hand it to the session, make the resulting changes durable through the [`Store`]
//! (group-committed), sign, write the reply. Requests on one connection are handled one at a
//! time (backpressure); a connection slot is taken before `accept` (connection cap); every read
//! and write has a timeout; shutdown stops accepting and lets requests in flight finish.
//!
//! # Layout
//! - [`HostService`]: session + counting tables + store + clock; `handle(frame)`.
//! - [`run`]: the accept loop.
//! - [`ServerConfig`]: limits and timeouts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tally_core::counting::CountTables;
use tally_core::host::{HostSession, Outcome};
use tally_core::time::Clock;
use tally_proto::{Frame, MAX_FRAME, ResultCode};
use tally_store::{Store, StoreError};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use uuid::Uuid;

/// R27: the event id logged for each activation request.
pub const EVENT_ACTIVATION_REQUEST: u32 = 12290;

/// Server errors.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The store failed at start.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A socket operation failed.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
}

/// Limits and timeouts.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Time allowed to receive the rest of a frame once its first bytes arrived.
    pub read_timeout: Duration,
    /// Time a connection may sit idle before (or between) requests.
    pub idle_timeout: Duration,
    /// Time allowed to write a reply.
    pub write_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// One pool's live numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolCount {
    /// The pool.
    pub pool: Uuid,
    /// Live entries (R4).
    pub count: u32,
    /// Table capacity (R5).
    pub capacity: u32,
}

/// What to send back for one frame.
#[derive(Debug)]
pub struct Handled {
    /// The reply frame.
    pub reply: Vec<u8>,
    /// Whether to close the connection after sending it.
    pub close: bool,
}

/// The host: session logic, counting state, durable store, clock.
pub struct HostService {
    session: std::sync::RwLock<Arc<HostSession>>,
    tables: Mutex<CountTables>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for HostService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostService")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl HostService {
    /// Builds the service, loading the counting tables from the store.
    pub async fn open(
        session: Arc<HostSession>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServerError> {
        let tables = CountTables::from_snapshots(store.load_tables().await?);
        Ok(Self {
            session: std::sync::RwLock::new(session),
            tables: Mutex::new(tables),
            store,
            clock,
        })
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

    /// Live counts per pool.
    pub fn counts(&self) -> Vec<PoolCount> {
        let now = self.clock.now();
        self.tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .summary(now)
            .into_iter()
            .map(|(pool, count, capacity)| PoolCount {
                pool,
                count,
                capacity,
            })
            .collect()
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
        match session.handle(frame, now, &self.tables) {
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
                let (result, count, threshold) = (reg.result, reg.count, pending.threshold);
                let commit_started = std::time::Instant::now();
                let committed = self.store.commit(pending.changes.clone()).await;
                metrics::histogram!("tally_store_commit_seconds")
                    .record(commit_started.elapsed().as_secs_f64());
                metrics::counter!("tally_requests_total", "result" => result.name().unwrap_or("unknown")).increment(1);
                let reply = match committed {
                    Ok(()) => session.seal(&pending),
                    Err(error) => {
                        warn!(%peer, %error, %cmid, "could not store activation; answering storage_failure");
                        session.seal_failure(&pending, ResultCode::STORAGE_FAILURE)
                    }
                };
                // R27: event 12290 for each activation request, with machine name and time.
                info!(
                    event_id = EVENT_ACTIVATION_REQUEST,
                    machine = %machine,
                    %cmid,
                    %sku,
                    result = result.name().unwrap_or("unknown"),
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

/// Serves connections on `listener` until `shutdown` is cancelled, then waits for the
/// requests in flight to finish.
pub async fn run(
    listener: TcpListener,
    service: Arc<HostService>,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    run_rebindable(listener, service, config, shutdown, None).await
}

/// As [`run`]; a listener sent on `rebind` replaces the current one (R26: a port change). The
/// old listener is closed; connections already accepted finish their requests.
pub async fn run_rebindable(
    mut listener: TcpListener,
    service: Arc<HostService>,
    config: ServerConfig,
    shutdown: CancellationToken,
    mut rebind: Option<tokio::sync::mpsc::Receiver<TcpListener>>,
) -> Result<(), ServerError> {
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let tracker = TaskTracker::new();
    let config = Arc::new(config);
    let mut backoff = Duration::from_millis(1);
    loop {
        // Take a slot before accepting, so a flood waits in the backlog instead of in memory.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(new) = async { match rebind.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                info!(addr = ?new.local_addr().ok(), "now listening on the new address; the old one is closed");
                listener = new;
                drop(permit);
                continue;
            }
            r = listener.accept() => match r {
                Ok(conn) => { backoff = Duration::from_millis(1); conn }
                Err(error) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    warn!(%error, backoff_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let service = Arc::clone(&service);
        let config = Arc::clone(&config);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            if let Err(error) = serve_connection(stream, peer, &service, &config, &shutdown).await {
                debug!(%peer, %error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    info!(
        in_flight = tracker.len(),
        "shutting down: no new connections; finishing requests in flight"
    );
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    service: &HostService,
    config: &ServerConfig,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    metrics::gauge!("tally_connections_open").increment(1.0);
    let result = serve_frames(stream, peer, service, config, shutdown).await;
    metrics::gauge!("tally_connections_open").decrement(1.0);
    result
}

async fn serve_frames(
    mut stream: TcpStream,
    peer: SocketAddr,
    service: &HostService,
    config: &ServerConfig,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    // Room for one whole frame plus the start of a pipelined next one.
    let mut buf = [0u8; 2 * MAX_FRAME];
    let mut have = 0usize;
    loop {
        // Cheap check first (mini-redis `Frame::check`): is a whole frame buffered?
        let total = match Frame::check(&buf[..have]) {
            Ok(Some(total)) => total,
            Ok(None) => {
                let read = if have == 0 {
                    // Between requests, shutdown wins; once a request has started, it finishes.
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        r = timeout(config.idle_timeout, stream.read(&mut buf[have..])) => r,
                    }
                } else {
                    timeout(config.read_timeout, stream.read(&mut buf[have..])).await
                };
                match read {
                    Ok(Ok(0)) => {
                        if have > 0 {
                            debug!(%peer, "peer closed mid-frame");
                        }
                        return Ok(());
                    }
                    Ok(Ok(n)) => {
                        have += n;
                        continue;
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) if have == 0 => return Ok(()), // idle too long
                    Err(_) => {
                        warn!(%peer, "request not received within the read timeout; closing connection");
                        return Ok(());
                    }
                }
            }
            Err(reason) => {
                // Refused on the length prefix alone: nothing more is read.
                warn!(%peer, %reason, "oversized or malformed frame; closing connection");
                let reply = HostSession::error_frame(ResultCode::FRAME_TOO_LARGE);
                let _ = timeout(config.write_timeout, stream.write_all(&reply)).await;
                return Ok(());
            }
        };
        let handled = service.handle(&buf[..total], peer).await;
        buf.copy_within(total..have, 0);
        have -= total;
        match timeout(config.write_timeout, stream.write_all(&handled.reply)).await {
            Ok(r) => r?,
            Err(_) => {
                warn!(%peer, "reply not sent within the write timeout; closing connection");
                return Ok(());
            }
        }
        if handled.close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests;
