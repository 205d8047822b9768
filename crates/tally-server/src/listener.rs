//! The accept loop and the per-connection frame loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tally_core::host::HostSession;
use tally_proto::{Frame, MAX_FRAME, ResultCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;
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
