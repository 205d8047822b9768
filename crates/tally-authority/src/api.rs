//! What every route module of the authority's HTTP API shares: the state ([`AppState`]), the
//! error body ([`ApiError`], `{"error": CODE, "message": TEXT}`), the JSON body extractor
//! ([`ApiJson`]) and the JSON answer (`ok`). Imports no route module: `http` (the router and
//! most routes) and `log_http` (the transparency log's routes) both import this one.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::service::{Service, ServiceError};
use crate::store::{Refusal, StoreError};

/// Shared state.
#[derive(Clone)]
pub struct AppState {
    /// The service.
    pub service: Arc<Service>,
    /// The operator token.
    pub operator_token: Arc<str>,
}

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.code, "message": self.message })),
        )
            .into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let status = match &e {
            ServiceError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServiceError::KeyNotValid(_) | ServiceError::Refused(Refusal::UnknownKey) => {
                StatusCode::FORBIDDEN
            }
            ServiceError::Refused(Refusal::Revoked { .. }) => StatusCode::FORBIDDEN,
            ServiceError::Refused(_) => StatusCode::CONFLICT,
            ServiceError::NotFound(_) | ServiceError::NotLogged => StatusCode::NOT_FOUND,
            // X8: a damaged log is said as it is: whoever checks the log must learn it.
            ServiceError::Store(error @ StoreError::LogDamaged { .. }) => {
                tracing::error!(%error, "the transparency log is damaged");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ServiceError::Store(error) => {
                // Details stay in the server log (axum error-handling example).
                tracing::error!(%error, "authority storage failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ServiceError::Signer(error) => {
                tracing::error!(%error, "the root key could not sign");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let message = match &e {
            ServiceError::Refused(
                r @ (Refusal::TooManyHosts { .. } | Refusal::TooManyActivations { .. }),
            ) => format!(
                "{r}. Ask the vendor for an exception, quoting the key's last five characters and serial; \
                 the vendor runs `tally authority exception --serial SERIAL --hosts N --reason TEXT`"
            ),
            ServiceError::Store(e @ StoreError::LogDamaged { .. }) => e.to_string(),
            other => other.to_string(),
        };
        Self::new(status, e.code(), message)
    }
}

/// JSON body extractor whose rejections are JSON 4xx errors.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

/// AUTHORITY-API.md and `openapi.json`: a body over the cap is 413 `too_large`; every other
/// unreadable body (missing or wrong content type, bad JSON, wrong field types or names) is 400
/// `bad_request`, never axum's own 415 or 422.
fn json_rejection(r: JsonRejection) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", r.body_text())
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", r.body_text())
    }
}

pub(crate) fn ok<T: Serialize>(v: T) -> Response {
    Json(v).into_response()
}
