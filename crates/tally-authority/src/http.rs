//! The authority's HTTP API (axum). Public: `GET /v1/authority`, `POST /v1/host-activations`,
//! `POST /v1/offline-confirmations`, `GET /openapi.json`, the transparency log's
//! `GET /v1/log/{head,entries,inclusion,consistency}` (X8, in `log_http`). Operator (bearer
//! token): keys, key details, exceptions, revocation, audit log. Every error is a JSON body
//! `{"error": CODE, "message": TEXT}` with a 4xx status; internal details stay in the log.
//!
//! Module layering (no circle): `api` holds what every route module shares ([`AppState`],
//! [`ApiError`], [`ApiJson`]); `log_http` (the log's routes) and this module (the other routes
//! and the assembly of the router, [`app`]) both import it, and only this module imports
//! `log_http`.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::api::ok;
pub use crate::api::{ApiError, ApiJson, AppState};
use crate::service::{
    ExceptionRequest, HostActivationRequest, IssueRequest, MakActivationRequest, MakIssueRequest,
    RevokeRequest,
};

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;

/// The authority listener's limits (internet-facing, behind the vendor's TLS proxy): the body
/// cap is [`MAX_BODY`].
pub fn default_limits() -> tally_net::http::HttpLimits {
    tally_net::http::HttpLimits {
        label: "authority",
        max_connections: 1024,
        max_per_source: 64,
        max_body: MAX_BODY,
        ..tally_net::http::HttpLimits::default()
    }
}

/// Serves the authority `router` ([`app`]) on `listener` under `limits` ([`default_limits`]):
/// header, request (body) and idle deadlines, a connection cap with eviction of the idlest
/// connection, a per-source cap and the body cap, until `shutdown` is cancelled; requests in
/// flight finish. Plain HTTP: TLS is the vendor's proxy's job (AUTHORITY-API.md). Note that
/// behind a proxy every connection comes from the proxy's address: raise `max_per_source` to
/// `max_connections` there.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: tally_net::http::HttpLimits,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tally_net::http::serve(listener, None, router, limits, shutdown).await;
}

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

fn serial(p: Result<Path<u32>, PathRejection>) -> Result<u32, ApiError> {
    p.map(|Path(s)| s).map_err(|r| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("serial: {}", r.body_text()),
        )
    })
}

/// The actor recorded in the audit log for operator requests.
const OPERATOR: &str = "operator";

/// Operator endpoints: the bearer token is checked here, in a middleware that runs before any
/// extractor, so a request without the right token is refused before its body is read or
/// parsed (X4: an unauthenticated peer costs no parsing).
async fn require_operator(
    State(state): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    match operator(&state, req.headers()) {
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn operator(state: &AppState, headers: &HeaderMap) -> Result<&'static str, ApiError> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = state.operator_token.as_bytes();
    if tally_core::secret::constant_time_eq(given.as_bytes(), expected) {
        Ok(OPERATOR)
    } else {
        tracing::warn!("operator request refused: missing or wrong bearer token");
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "operator endpoints need `Authorization: Bearer TOKEN`",
        ))
    }
}

async fn authority_info(State(state): State<AppState>) -> Response {
    let public = state.service.authority().public();
    ok(json!({
        "public_key_file": crate::dir::public_file_text(state.service.authority()),
        "authority_id": tally_core::trust::to_hex(&tally_core::trust::authority_id(&public)),
    }))
}

async fn host_activation(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<HostActivationRequest>,
) -> Result<Response, ApiError> {
    // X7: run to the end even if the caller hangs up: the activation's commit and the
    // supersession of the machine's older certificates (two transactions) are never split by a
    // dropped request.
    let service = Arc::clone(&state.service);
    let activation = tokio::spawn(async move { service.activate_host(&req).await })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "host activation task failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error (see the authority log)",
            )
        })??;
    tracing::info!(
        serial = activation.serial,
        hosts_used = activation.usage.hosts_used,
        "host activated"
    );
    Ok(ok(activation))
}

async fn mak_activation(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<MakActivationRequest>,
) -> Result<Response, ApiError> {
    let activation = state.service.activate_mak(&req).await?;
    tracing::info!(
        serial = activation.serial,
        machines = activation.usage.hosts_used,
        "MAK client activated"
    );
    Ok(ok(activation))
}

async fn issue_mak(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<MakIssueRequest>,
) -> Result<Response, ApiError> {
    let actor = OPERATOR;
    Ok((
        StatusCode::CREATED,
        Json(state.service.issue_mak(&req, actor).await?),
    )
        .into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmRequest {
    installation_id: String,
}

async fn offline_confirmation(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ConfirmRequest>,
) -> Result<Response, ApiError> {
    let groups = state.service.confirm(&req.installation_id).await?;
    Ok(ok(
        json!({ "confirmation_id": groups.join(" "), "groups": groups }),
    ))
}

async fn list_keys(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(ok(state.service.keys().await?))
}

async fn issue_key(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<IssueRequest>,
) -> Result<Response, ApiError> {
    let actor = OPERATOR;
    Ok((
        StatusCode::CREATED,
        Json(state.service.issue_host_key(&req, actor).await?),
    )
        .into_response())
}

async fn key_detail(
    State(state): State<AppState>,
    p: Result<Path<u32>, PathRejection>,
) -> Result<Response, ApiError> {
    Ok(ok(state.service.key(serial(p)?).await?))
}

async fn exception(
    State(state): State<AppState>,
    p: Result<Path<u32>, PathRejection>,
    ApiJson(req): ApiJson<ExceptionRequest>,
) -> Result<Response, ApiError> {
    let actor = OPERATOR;
    Ok(ok(state.service.exception(serial(p)?, &req, actor).await?))
}

async fn revoke(
    State(state): State<AppState>,
    p: Result<Path<u32>, PathRejection>,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> Result<Response, ApiError> {
    let actor = OPERATOR;
    Ok(ok(state.service.revoke(serial(p)?, &req, actor).await?))
}

async fn revoke_certificate(
    State(state): State<AppState>,
    Path(fingerprint): Path<String>,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> Result<Response, ApiError> {
    let added = state
        .service
        .revoke_certificate(&fingerprint, &req, OPERATOR)
        .await?;
    Ok(ok(
        serde_json::json!({ "revoked": fingerprint.trim().to_lowercase(), "newly_added": added }),
    ))
}

async fn revocations(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(ok(state.service.revocations().await?))
}

async fn audit(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(ok(state.service.audit().await?))
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see /openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed; see /openapi.json",
    )
}

/// The router. Operator routes sit behind [`require_operator`] (a route layer, so it runs
/// before their extractors); public routes need no token.
pub fn app(state: AppState) -> Router {
    let operator_routes = Router::new()
        .route("/v1/maks", post(issue_mak))
        .route("/v1/keys", get(list_keys).post(issue_key))
        .route("/v1/keys/{serial}", get(key_detail))
        .route("/v1/keys/{serial}/exception", post(exception))
        .route("/v1/keys/{serial}/revoke", post(revoke))
        .route(
            "/v1/certificates/{fingerprint}/revoke",
            post(revoke_certificate),
        )
        .route("/v1/audit", get(audit))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_operator,
        ));
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/v1/authority", get(authority_info))
        .route("/v1/revocations", get(revocations))
        .route("/v1/host-activations", post(host_activation))
        .route("/v1/offline-confirmations", post(offline_confirmation))
        .route("/v1/mak-activations", post(mak_activation))
        .merge(crate::log_http::routes())
        .merge(operator_routes)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}
