//! [`serve`]: an axum [`Router`] on a TCP listener, optionally behind TLS, with every limit a
//! hostile peer could otherwise exhaust.
//!
//! `axum::serve` has no header, body or idle deadline and no connection cap, and a TLS
//! `Listener::accept` that does the handshake runs handshakes one at a time (one silent peer
//! stops everyone). Here:
//! - `accept` never waits on anything but the kernel: each connection gets an [`Admission`]
//!   ticket (global cap with eviction of the idlest connection, per-source cap) and its own
//!   task, in which the TLS handshake runs with its own deadline;
//! - hyper reads a request head within [`HttpLimits::header_timeout`] and buffers at most 16 KiB
//!   of it;
//! - a request (from its head to the response) must complete within
//!   [`HttpLimits::request_timeout`], so a body trickled byte by byte cannot hold a connection;
//! - bodies are capped at [`HttpLimits::max_body`] before the router sees them (axum answers
//!   413 on the cap);
//! - a keep-alive connection with no request for [`HttpLimits::idle_timeout`] is closed;
//! - shutdown stops accepting, lets requests in flight finish and closes idle connections.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::{debug, info, warn};

use crate::admission::{Admission, AdmissionLimits, Phase, RateLimitedWarn, Ticket};

/// Limits of one HTTP listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Name of the listener in logs and metric labels (`admin`, `authority`).
    pub label: &'static str,
    /// Connections open at once (the idlest is evicted at the cap), so the listener can never
    /// take the file descriptors other listeners of the process need.
    pub max_connections: usize,
    /// Connections open at once from one source address.
    pub max_per_source: usize,
    /// Time to finish the TLS handshake after `accept`.
    pub handshake_timeout: Duration,
    /// Time to receive a whole request head.
    pub header_timeout: Duration,
    /// Time from a request head to its response (covers reading the body).
    pub request_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Largest request body, bytes.
    pub max_body: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            label: "http",
            max_connections: 256,
            max_per_source: 64,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_body: 16 * 1024,
        }
    }
}

/// Largest request head hyper buffers.
const MAX_HEAD: usize = 16 * 1024;

/// Serves `router` on `listener` (TLS when `tls` is given) under `limits` until `shutdown` is
/// cancelled; then stops accepting, lets requests in flight finish, and returns once every
/// connection is closed.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let admission = Admission::new(
        limits.label,
        AdmissionLimits {
            max_connections: limits.max_connections,
            max_per_source: limits.max_per_source,
        },
    );
    serve_with(listener, tls, router, limits, shutdown, admission).await;
}

/// As [`serve`], with a registry the caller can watch (tests count evictions with it).
pub async fn serve_with(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
    admission: Arc<Admission>,
) {
    let tracker = TaskTracker::new();
    let warnings = Arc::new(Warnings::default());
    let mut backoff = Duration::from_millis(1);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(conn) => { backoff = Duration::from_millis(1); conn }
                Err(error) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    warn!(listener = limits.label, %error, backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX), "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        // Refused: dropping the stream closes it (the refusal is logged, rate-limited).
        let Ok(ticket) = admission.admit(peer.ip()) else {
            continue;
        };
        let router = router.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        let warnings = Arc::clone(&warnings);
        tracker.spawn(async move {
            connection(tcp, peer, tls, router, limits, ticket, shutdown, &warnings).await;
        });
    }
    info!(
        listener = limits.label,
        open = tracker.len(),
        "shutting down: no new connections; finishing requests in flight"
    );
    tracker.close();
    tracker.wait().await;
}

/// Rate-limited warnings caused by peers.
#[derive(Default)]
struct Warnings {
    handshake: RateLimitedWarn,
    request: RateLimitedWarn,
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: HttpLimits,
    ticket: Ticket,
    shutdown: CancellationToken,
    warnings: &Warnings,
) {
    let _ = tcp.set_nodelay(true);
    let Some(acceptor) = tls else {
        drive(
            TokioIo::new(tcp),
            peer,
            router,
            limits,
            &ticket,
            &shutdown,
            warnings,
        )
        .await;
        return;
    };
    // Each handshake runs in its own task with its own deadline: a silent peer holds only
    // its own connection (and is the first to be evicted when the listener is full).
    let handshake = tokio::select! {
        _ = ticket.evicted() => return,
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => r,
    };
    match handshake {
        Ok(Ok(stream)) => {
            drive(
                TokioIo::new(stream),
                peer,
                router,
                limits,
                &ticket,
                &shutdown,
                warnings,
            )
            .await;
        }
        Ok(Err(error)) => debug!(listener = limits.label, %peer, %error, "TLS handshake failed"),
        Err(_) => {
            if let Some(count) = warnings.handshake.tick() {
                warn!(listener = limits.label, %peer, count, "TLS handshake not finished in time; closing (counted every 10 s)");
            }
        }
    }
}

/// What the connection is doing, shared between the service (which sees requests) and the
/// connection's watchdog (which enforces the idle and request deadlines).
struct Activity {
    state: Mutex<(usize, Instant)>,
    changed: Notify,
}

impl Activity {
    /// When the connection must have made progress: idle deadline with no request in flight,
    /// request deadline with one.
    fn deadline(&self, limits: &HttpLimits) -> (bool, Instant) {
        let (in_flight, since) = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if in_flight == 0 {
            (false, since + limits.idle_timeout)
        } else {
            (true, since + limits.request_timeout)
        }
    }
}

/// Marks a request in flight until dropped (the response is ready, or the request was cut).
struct InFlight {
    activity: Arc<Activity>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self
            .activity
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.0 = state.0.saturating_sub(1);
        state.1 = Instant::now();
        drop(state);
        self.activity.changed.notify_one();
    }
}

async fn drive<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    router: Router,
    limits: HttpLimits,
    ticket: &Ticket,
    shutdown: &CancellationToken,
    warnings: &Warnings,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        state: Mutex::new((0, Instant::now())),
        changed: Notify::new(),
    });
    let service_activity = Arc::clone(&activity);
    let max_body = limits.max_body;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        {
            let mut state = service_activity
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.0 += 1;
            state.1 = Instant::now();
        }
        service_activity.changed.notify_one();
        let guard = InFlight {
            activity: Arc::clone(&service_activity),
        };
        let mut router = router.clone();
        let req = req.map(|body| axum::body::Body::new(Limited::new(body, max_body)));
        async move {
            let response = router.call(req).await;
            drop(guard);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    let mut phase = Phase::Idle;
    loop {
        let (in_request, deadline) = activity.deadline(&limits);
        // While a request is being handled the connection is not evictable.
        let now_phase = if in_request { Phase::Busy } else { Phase::Idle };
        if now_phase != phase {
            ticket.set_phase(now_phase);
            phase = now_phase;
        }
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(error) = r {
                    debug!(listener = limits.label, %peer, %error, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.cancelled(), if !draining => {
                // Finish the request in flight, then close; an idle connection closes at once.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = ticket.evicted() => return,
            _ = activity.changed.notified() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {
                let (still_in_request, now_deadline) = activity.deadline(&limits);
                if still_in_request == in_request && now_deadline <= Instant::now() {
                    if in_request && let Some(count) = warnings.request.tick() {
                        warn!(listener = limits.label, %peer, count, "request not completed within the request deadline; closing (counted every 10 s)");
                    }
                    return;
                }
            }
        }
    }
}
