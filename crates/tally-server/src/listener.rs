//! The accept loop and the per-connection frame loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tally_core::host::HostSession;
use tally_net::{Admission, AdmissionLimits, Phase, RateLimitedWarn, Refused, Ticket};
use tally_proto::{Frame, MAX_FRAME, ResultCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::{HostService, ServerConfig, ServerError};

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
    listener: TcpListener,
    service: Arc<HostService>,
    config: ServerConfig,
    shutdown: CancellationToken,
    rebind: Option<tokio::sync::mpsc::Receiver<TcpListener>>,
) -> Result<(), ServerError> {
    let admission = Admission::new(
        "activation",
        AdmissionLimits {
            max_connections: config.max_connections,
            max_per_source: config.max_connections_per_source,
        },
    );
    run_admitted(listener, service, config, shutdown, rebind, admission).await
}

/// As [`run_rebindable`], with the connection registry given by the caller (tests watch its
/// evictions; see [`Admission`]).
pub async fn run_admitted(
    mut listener: TcpListener,
    service: Arc<HostService>,
    config: ServerConfig,
    shutdown: CancellationToken,
    mut rebind: Option<tokio::sync::mpsc::Receiver<TcpListener>>,
    admission: Arc<Admission>,
) -> Result<(), ServerError> {
    let tracker = TaskTracker::new();
    tracker.spawn(log_summaries(
        Arc::clone(&service),
        config.summary_interval,
        shutdown.clone(),
    ));
    let config = Arc::new(config);
    let warnings = Arc::new(Warnings::default());
    let mut backoff = Duration::from_millis(1);
    loop {
        // No slot is taken before `accept`: a flood must never keep new clients in the
        // backlog. Admission decides after `accept` (per-source cap, eviction when full).
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(new) = async { match rebind.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                info!(addr = ?new.local_addr().ok(), "now listening on the new address; the old one is closed");
                listener = new;
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
        let ticket = match admission.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(Refused::Full) => {
                // Every connection is busy with a request (not an attack pattern: real load).
                // Say so if the socket takes it without waiting; then close.
                let _ = stream.try_write(&HostSession::error_frame(ResultCode::HOST_BUSY));
                continue;
            }
            // Over the per-source cap: closed silently (logged, rate-limited, by `admit`).
            Err(_) => continue,
        };
        let service = Arc::clone(&service);
        let config = Arc::clone(&config);
        let shutdown = shutdown.clone();
        let warnings = Arc::clone(&warnings);
        tracker.spawn(async move {
            if let Err(error) = serve_connection(
                stream, peer, &service, &config, &shutdown, &ticket, &warnings,
            )
            .await
            {
                debug!(%peer, %error, "connection ended with an error");
            }
            drop(ticket);
        });
    }
    info!(
        in_flight = tracker.len(),
        "shutting down: no new connections; finishing requests in flight"
    );
    tracker.close();
    tracker.wait().await;
    // The requests answered since the last summary, those in flight at shutdown included.
    log_summary(&service.take_summary(), config.summary_interval);
    Ok(())
}

/// Logs, every `every`, how many activation requests were answered and how (one line for all
/// of them, not one per request; the per-request lines are at debug level, see
/// [`crate::REQUEST_LOG_TARGET`]). A quiet interval logs nothing. Ends at shutdown; the accept
/// loop logs the last interval once the requests in flight are done.
async fn log_summaries(service: Arc<HostService>, every: Duration, shutdown: CancellationToken) {
    let every = every.max(Duration::from_secs(1));
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => log_summary(&service.take_summary(), every),
        }
    }
}

fn log_summary(s: &crate::Summary, every: Duration) {
    if s.total() > 0 {
        info!(
            requests = s.total(),
            activated = s.activated,
            below_threshold = s.below_threshold,
            refused = s.refused,
            storage_failure = s.storage_failure,
            seconds = every.as_secs(),
            "activation requests answered (per-request lines: --log info,tally::requests=debug; all of them: tally host events --id 12290)"
        );
    }
}

/// Warnings caused by peers, logged once and then counted (see [`RateLimitedWarn`]).
#[derive(Default)]
struct Warnings {
    slow_request: RateLimitedWarn,
    bad_frame: RateLimitedWarn,
    slow_reader: RateLimitedWarn,
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    service: &HostService,
    config: &ServerConfig,
    shutdown: &CancellationToken,
    ticket: &Ticket,
    warnings: &Warnings,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    metrics::gauge!("tally_connections_open").increment(1.0);
    let result = serve_frames(stream, peer, service, config, shutdown, ticket, warnings).await;
    metrics::gauge!("tally_connections_open").decrement(1.0);
    result
}

/// PROTOCOL.md "Transport": `idle_timeout` before the first byte of a request (and between
/// requests); once the first byte of a frame arrived, the whole frame within `read_timeout`
/// (one deadline for the frame, not per read, so trickling bytes does not extend it). An
/// evicted connection is closed without a reply, unless its request is already being handled.
async fn serve_frames(
    mut stream: TcpStream,
    peer: SocketAddr,
    service: &HostService,
    config: &ServerConfig,
    shutdown: &CancellationToken,
    ticket: &Ticket,
    warnings: &Warnings,
) -> std::io::Result<()> {
    // Room for one whole frame plus the start of a pipelined next one.
    let mut buf = [0u8; 2 * MAX_FRAME];
    let mut have = 0usize;
    // Deadline of the frame being received (set on its first byte).
    let mut frame_deadline: Option<Instant> = None;
    loop {
        // Cheap check first (mini-redis `Frame::check`): is a whole frame buffered?
        let total = match Frame::check(&buf[..have]) {
            Ok(Some(total)) => total,
            Ok(None) => {
                let read = match frame_deadline {
                    None => {
                        // Between requests, shutdown wins; once a request has started, it
                        // finishes (unless evicted).
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = ticket.evicted() => return Ok(()),
                            r = timeout(config.idle_timeout, stream.read(&mut buf[have..])) => r,
                        }
                    }
                    Some(deadline) => tokio::select! {
                        _ = ticket.evicted() => return Ok(()),
                        r = timeout_at(deadline, stream.read(&mut buf[have..])) => r,
                    },
                };
                match read {
                    Ok(Ok(0)) => {
                        if have > 0 {
                            debug!(%peer, "peer closed mid-frame");
                        }
                        return Ok(());
                    }
                    Ok(Ok(n)) => {
                        if frame_deadline.is_none() {
                            frame_deadline = Some(Instant::now() + config.read_timeout);
                            ticket.set_phase(Phase::Receiving);
                        }
                        have += n;
                        continue;
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) if frame_deadline.is_none() => return Ok(()), // idle too long
                    Err(_) => {
                        if let Some(count) = warnings.slow_request.tick() {
                            warn!(%peer, count, "request not received within the read deadline; closing connection (counted every 10 s)");
                        }
                        return Ok(());
                    }
                }
            }
            Err(reason) => {
                // Refused on the length prefix alone: nothing more is read.
                if let Some(count) = warnings.bad_frame.tick() {
                    warn!(%peer, %reason, count, "oversized or malformed frame; closing connection (counted every 10 s)");
                }
                // The code the decode side gives (lengths 0 and 1 are malformed, not too large).
                let reply = HostSession::error_frame(reason.result_code());
                let _ = timeout(config.write_timeout, stream.write_all(&reply)).await;
                return Ok(());
            }
        };
        // A whole request: handled and answered without eviction (bounded by the commit
        // deadline and the write timeout).
        ticket.set_phase(Phase::Busy);
        let handled = service.handle(&buf[..total], peer).await;
        buf.copy_within(total..have, 0);
        have -= total;
        match timeout(config.write_timeout, stream.write_all(&handled.reply)).await {
            Ok(r) => r?,
            Err(_) => {
                if let Some(count) = warnings.slow_reader.tick() {
                    warn!(%peer, count, "reply not sent within the write timeout; closing connection (counted every 10 s)");
                }
                return Ok(());
            }
        }
        if handled.close {
            return Ok(());
        }
        // A pipelined next request already started: its deadline runs from now.
        if have > 0 {
            frame_deadline = Some(Instant::now() + config.read_timeout);
            ticket.set_phase(Phase::Receiving);
        } else {
            frame_deadline = None;
            ticket.set_phase(Phase::Idle);
        }
    }
}
