//! Host administration over HTTP (R26, R27): an authenticated JSON API on a separate address
//! (loopback by default), a Prometheus `/metrics` endpoint and the embedded web dashboard.
//!
//! The API changes the running host through [`HostControl`], which the binary implements
//! (rebinding the port, swapping intervals, switching DNS publishing); this crate only speaks
//! HTTP. Every error is `{"error": CODE, "message": TEXT}`; a token never appears in logs.
//!
//! # Layout
//! - [`HostControl`], [`Settings`], [`SettingsChange`]: the live settings seam.
//! - [`app`]: the router.
//! - [`remote`]: the client side: [`remote::AdminClient`], for `tally host …` and `tally slmgr`.
//! - [`view`]: client states, registry filters, per-edition counts, activations over time, CSV,
//!   and `_rfc3339` beside every Unix-ms time in JSON.
//! - [`serve`]: the listener, with the limits of [`tally_net::http`] ([`default_limits`]);
//!   `tls`: the optional TLS acceptor.
//! - `assets/dashboard.html`: the dashboard (no external resources: works air-gapped).

use std::path::PathBuf;
use std::sync::Arc;
use view::Selection;

pub mod fuzzing;
mod prometheus;
pub mod remote;
pub mod report;
pub mod tls;
pub mod view;

use async_trait::async_trait;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tally_core::time::{Clock, SystemClock, Timestamp};
use tally_core::trust::to_hex;
use tally_server::HostService;
use tally_store::{EventQuery, RegistryPage, RegistrySort};

pub use tally_net::http::HttpLimits;

/// The admin listener's limits: a small cap (an admin port sees a few browsers and one
/// Prometheus), so it can never take the file descriptors the activation port needs.
pub fn default_limits() -> HttpLimits {
    HttpLimits {
        label: "admin",
        max_connections: 128,
        max_per_source: 32,
        ..HttpLimits::default()
    }
}

/// Serves the admin `router` ([`app`]) on `listener`, behind TLS when `tls` is given
/// ([`tls::acceptor`]), under `limits` ([`default_limits`]): TLS handshakes run concurrently,
/// each with its own deadline; header, request and idle deadlines; a connection cap with
/// eviction of the idlest connection and a per-source cap; a body cap. Returns after
/// `shutdown` is cancelled and the requests in flight finished.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    limits: HttpLimits,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tally_net::http::serve(listener, tls, router, limits, shutdown).await;
}

/// The dashboard page.
pub const DASHBOARD: &str = include_str!("../assets/dashboard.html");

/// The host's live settings (R26).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// The activation port (R15).
    pub port: u16,
    /// The full listen address.
    pub listen: String,
    /// Retry interval after a failure, seconds (R8, R9).
    pub activation_interval_secs: u32,
    /// Renewal interval, seconds (R8, R9).
    pub renewal_interval_secs: u32,
    /// Whether DNS publishing is on (R17).
    pub dns_publish: bool,
    /// `normal` or `low` process priority (R26).
    pub priority: String,
}

/// A change to the settings; absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsChange {
    /// New activation port: the host rebinds without dropping requests in flight.
    pub port: Option<u16>,
    /// New listen address (address and port), rebound the same way.
    pub listen: Option<String>,
    /// New retry interval, seconds.
    pub activation_interval_secs: Option<u32>,
    /// New renewal interval, seconds.
    pub renewal_interval_secs: Option<u32>,
    /// DNS publishing on or off.
    pub dns_publish: Option<bool>,
    /// `normal` or `low`.
    pub priority: Option<String>,
}

/// What the admin API needs from the running host.
#[async_trait]
pub trait HostControl: Send + Sync + 'static {
    /// The settings in force.
    fn settings(&self) -> Settings;
    /// Applies and persists a change; the error is a sentence for the admin.
    async fn apply(&self, change: SettingsChange) -> Result<Settings, String>;
    /// The DNS publishing state (last attempt and results).
    fn dns_state(&self) -> serde_json::Value;
}

/// Shared state of the admin router.
#[derive(Clone)]
pub struct AdminState {
    /// The host.
    pub service: Arc<HostService>,
    /// Live settings.
    pub control: Arc<dyn HostControl>,
    /// The bearer token.
    pub token: Arc<str>,
    /// The Prometheus recorder's handle, if metrics are on.
    pub metrics: Option<PrometheusHandle>,
    /// The host's data directory (for its display).
    pub data_dir: PathBuf,
}

struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1, "message": self.2 }))).into_response()
    }
}

/// R26: the API needs `Authorization: Bearer TOKEN`; a refusal is logged without the token.
async fn require_token(
    State(state): State<AdminState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if tally_core::secret::constant_time_eq(given.as_bytes(), state.token.as_bytes()) {
        next.run(req).await
    } else {
        tracing::warn!(path = %req.uri().path(), "admin request refused: missing or wrong token");
        ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer TOKEN` (DATA_DIR/admin.token)".into(),
        )
        .into_response()
    }
}

async fn status(State(state): State<AdminState>) -> Result<Json<serde_json::Value>, ApiError> {
    let session = state.service.session();
    let identity = session.identity();
    let cert = identity.certificate();
    let catalog = session.catalog();
    let pools: Vec<serde_json::Value> = state
        .service
        .counts()
        .await
        .map_err(internal)?
        .into_iter()
        .map(|p| {
            let editions: Vec<_> = catalog
                .editions()
                .iter()
                .filter(|e| e.pool == p.pool)
                .collect();
            let min_threshold = editions.iter().map(|e| e.threshold).min().unwrap_or(0);
            let max_threshold = editions.iter().map(|e| e.threshold).max().unwrap_or(0);
            // R2: how many more machines each threshold of the pool needs before it activates.
            let needed = |t: u16| u32::from(t).saturating_sub(p.count);
            json!({
                "pool": p.pool,
                "name": catalog.pool(p.pool).map_or_else(|| p.pool.to_string(), |x| x.name.clone()),
                "count": p.count,
                "capacity": p.capacity,
                "server_threshold": min_threshold,
                "client_threshold": max_threshold,
                "server_needed": needed(min_threshold),
                "client_needed": needed(max_threshold),
            })
        })
        .collect();
    let clients = state
        .service
        .store()
        .registry_len()
        .await
        .map_err(internal)?;
    let now = SystemClock.now();
    let not_after = Timestamp(cert.body.not_after.saturating_mul(1000));
    let store = state.service.store();
    let mut body = json!({
        "certificate": {
            "fingerprint": to_hex(&identity.fingerprint()),
            "key_group": identity.coverage().group.name(),
            "generation": identity.coverage().generation,
            "not_after": not_after,
            "days_left": days_left(not_after, now),
        },
        "storage": {
            "up": store.storage_error().is_none(),
            "error": store.storage_error(),
            "registry_full": store.registry_full(),
            "events_at_cap": store.event_cap().at_cap,
            // Issue 21: a fleet's replication, and what is wrong with it.
            "replication": store.replication().map(|r| json!({
                "mode": r.mode,
                "summary": r.summary(),
                "survives_failover": r.survives_failover(),
                "warning": r.warning(),
            })),
        },
        "clock": clock_json(&state.service.clock_watch().status()),
        "revocation": revocation_json(session.revocations(), session.identity().certificate()),
        "catalog": { "name": catalog.name(), "version": catalog.version() },
        "pools": pools,
        "registry_clients": clients,
        "settings": state.control.settings(),
        "dns": state.control.dns_state(),
        "data_dir": state.data_dir,
        "time": now,
    });
    view::with_rfc3339(&mut body);
    Ok(Json(body))
}

/// X5: the host clock check's result, as `status` shows it (`tally host status` prints it).
pub fn clock_json(c: &tally_server::ClockStatus) -> serde_json::Value {
    let finding = |f: &tally_core::clock::Finding| json!({ "reference": f.reference.name(), "skew_seconds": f.skew_ms / 1000 });
    json!({
        "suspect": c.suspect(),
        "findings": c.findings.iter().map(finding).collect::<Vec<_>>(),
        "checked_at": c.checked_at,
        "retention_held_back": c.retention_held_back.as_ref().map(finding),
        "tolerance_secs": tally_core::clock::CLOCK_TOLERANCE_MS / 1000,
    })
}

/// The `revocation` part of a host's status (the admin API and `tally host status`).
pub fn revocation_json(
    held: &tally_core::revocation::Held,
    cert: &tally_proto::HostCertificate,
) -> serde_json::Value {
    let revoked = held.revokes_certificate(cert).map(|e| {
        serde_json::json!({
            "reason": e.reason.name(),
            "revoked_at": e.revoked_at,
            "message": tally_core::revocation::describe(&e),
        })
    });
    serde_json::json!({
        "serial": held.serial(),
        "issued_at": held.list().map(|l| l.list().issued_at),
        "entries": held.list().map_or(0, |l| l.list().entries.len()),
        "revoked": revoked,
    })
}

/// Whole days from `now` to `end` (negative once past).
fn days_left(end: Timestamp, now: Timestamp) -> i64 {
    (end.millis() - now.millis()).div_euclid(86_400_000)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "admin request failed");
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error (see the host log)".into(),
    )
}

async fn get_settings(State(state): State<AdminState>) -> Json<Settings> {
    Json(state.control.settings())
}

async fn patch_settings(
    State(state): State<AdminState>,
    body: Result<Json<SettingsChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Settings>, ApiError> {
    let Json(change) =
        body.map_err(|r| ApiError(StatusCode::BAD_REQUEST, "bad_request", r.body_text()))?;
    let settings = state
        .control
        .apply(change.clone())
        .await
        .map_err(|m| ApiError(StatusCode::BAD_REQUEST, "bad_setting", m))?;
    tracing::info!(?change, "settings changed");
    Ok(Json(settings))
}

#[derive(Deserialize)]
struct EventsQuery {
    since_secs: Option<u64>,
    id: Option<u32>,
    limit: Option<u32>,
}

async fn events(
    State(state): State<AdminState>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) =
        q.map_err(|r| ApiError(StatusCode::BAD_REQUEST, "bad_request", r.body_text()))?;
    let since = q
        .since_secs
        .map(|s| Timestamp(SystemClock.now().millis() - (s.min(1 << 40) as i64) * 1000));
    let events = state
        .service
        .store()
        .events(EventQuery {
            since,
            event_id: q.id,
            limit: q.limit.unwrap_or(100).min(10_000),
        })
        .await
        .map_err(internal)?;
    let mut body = json!(events);
    view::with_rfc3339(&mut body);
    Ok(Json(body))
}

#[derive(Deserialize)]
struct ReportQuery {
    from: i64,
    to: i64,
    format: Option<String>,
}

/// R6: a signed compliance report for `[from, to)` (Unix ms), JSON or CSV.
async fn report(
    State(state): State<AdminState>,
    q: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        q.map_err(|r| ApiError(StatusCode::BAD_REQUEST, "bad_request", r.body_text()))?;
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "format is csv or json".into(),
            ));
        }
    };
    let clients = report::clients_in_period(
        state.service.store().as_ref(),
        Timestamp(q.from),
        Timestamp(q.to),
    )
    .await
    .map_err(internal)?;
    let session = state.service.session();
    let text = report::build(
        session.identity(),
        session.catalog(),
        &clients,
        Timestamp(q.from),
        Timestamp(q.to),
        csv,
    )
    .map_err(internal)?;
    let content_type = if csv { "text/csv" } else { "application/json" };
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

#[derive(Deserialize)]
struct ClientsQuery {
    offset: Option<u64>,
    limit: Option<u32>,
    q: Option<String>,
    sort: Option<String>,
    filter: Option<String>,
}

fn selection(q: &ClientsQuery) -> Result<Selection, ApiError> {
    let sort = match q.sort.as_deref() {
        None | Some("") => RegistrySort::LastSeen,
        Some(s) => RegistrySort::parse(s).ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "sort is last_seen, machine or first_seen".into(),
            )
        })?,
    };
    let filter = match q.filter.as_deref() {
        None | Some("") | Some("all") => None,
        Some(f) => Some(view::Filter::parse(f).ok_or_else(|| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "filter is not_activated, in_grace, renewal_overdue or expired".into(),
            )
        })?),
    };
    let search =
        q.q.as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| s.chars().take(100).collect::<String>());
    Ok(Selection {
        search,
        sort,
        filter,
    })
}

/// Every registry row the selection keeps, named and classified.
async fn selected_rows(
    state: &AdminState,
    sel: &Selection,
) -> Result<Vec<view::ClientRow>, ApiError> {
    let settings = state.control.settings();
    view::selected_rows(
        state.service.store().as_ref(),
        state.service.session().catalog(),
        sel,
        SystemClock.now(),
        settings.renewal_interval_secs,
        settings.activation_interval_secs,
    )
    .await
    .map_err(internal)
}

/// The filtered registry as CSV, for the dashboard's export.
async fn clients_csv(
    State(state): State<AdminState>,
    q: Result<Query<ClientsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        q.map_err(|r| ApiError(StatusCode::BAD_REQUEST, "bad_request", r.body_text()))?;
    let rows = selected_rows(&state, &selection(&q)?).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"tally-clients.csv\"",
            ),
        ],
        view::csv(&rows),
    )
        .into_response())
}

/// Per-edition counts and the activations of the last 30 days, for the dashboard.
async fn summary(State(state): State<AdminState>) -> Result<Json<serde_json::Value>, ApiError> {
    let now = SystemClock.now();
    let settings = state.control.settings();
    let editions = view::per_edition_of_registry(
        state.service.store().as_ref(),
        state.service.session().catalog(),
        now,
        settings.renewal_interval_secs,
        settings.activation_interval_secs,
    )
    .await
    .map_err(internal)?;
    let days = 30;
    let events = view::activation_events(
        state.service.store().as_ref(),
        Timestamp(now.millis() - i64::from(days) * 86_400_000),
    )
    .await
    .map_err(internal)?;
    let mut body = json!({
        "editions": editions,
        "days": view::series(&events, now, days),
        "time": now,
    });
    view::with_rfc3339(&mut body);
    Ok(Json(body))
}

async fn clients(
    State(state): State<AdminState>,
    q: Result<Query<ClientsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) =
        q.map_err(|r| ApiError(StatusCode::BAD_REQUEST, "bad_request", r.body_text()))?;
    let sel = selection(&q)?;
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let (total, rows) = if sel.filter.is_some() {
        // A filter needs each row's state: read the (capped) registry and page in memory.
        let all = selected_rows(&state, &sel).await?;
        let total = all.len() as u64;
        let page = all
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(limit as usize)
            .collect::<Vec<_>>();
        (total, page)
    } else {
        let store = state.service.store();
        let page = RegistryPage {
            offset,
            limit,
            search: sel.search.clone(),
            sort: sel.sort,
        };
        let rows = store.registry(page).await.map_err(internal)?;
        let total = store.registry_count(sel.search).await.map_err(internal)?;
        let settings = state.control.settings();
        let rows = view::classify(
            rows,
            state.service.session().catalog(),
            None,
            SystemClock.now(),
            settings.renewal_interval_secs,
            settings.activation_interval_secs,
        );
        (total, rows)
    };
    let mut body = json!({ "total": total, "offset": offset, "limit": limit, "clients": rows });
    view::with_rfc3339(&mut body);
    Ok(Json(body))
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint".into(),
    )
}

/// The admin router: `/` (dashboard), `/metrics`, and `/api/v1/*` behind the token.
pub fn app(state: AdminState) -> Router {
    let api = Router::new()
        .route("/status", get(status))
        .route("/settings", get(get_settings).patch(patch_settings))
        .route("/events", get(events))
        .route("/clients", get(clients))
        .route("/clients.csv", get(clients_csv))
        .route("/summary", get(summary))
        .route("/report", get(report))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(prometheus::endpoint))
        .nest("/api/v1", api)
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .with_state(state)
}

#[cfg(test)]
mod serve_tests;
