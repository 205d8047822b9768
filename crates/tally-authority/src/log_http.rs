//! The transparency log's public HTTP endpoints (X8). Anyone may read the log: it holds only
//! what the authority already handed out (certificates, claims, catalogs, revocation lists).
//!
//! - `GET /v1/log/head[?size=N]`: a signed tree head, signed now.
//! - `GET /v1/log/entries?from=N&limit=M`: entries in index order (at most 1000).
//! - `GET /v1/log/inclusion?index=N[&size=M]` or `?object_sha256=HEX`: an inclusion proof file.
//! - `GET /v1/log/consistency?old=M[&new=N]`: a consistency proof file and the newer head.

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use tally_log::codec::{hash_from_hex, to_hex};

use crate::api::{ApiError, AppState, ok};
use crate::store::StoredEntry;

/// The public log routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/log/head", get(head))
        .route("/v1/log/entries", get(entries))
        .route("/v1/log/inclusion", get(inclusion))
        .route("/v1/log/consistency", get(consistency))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|r| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("query: {}", r.body_text()),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadQuery {
    size: Option<u64>,
}

async fn head(
    State(state): State<AppState>,
    q: Result<Query<HeadQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let h = state.service.log_head(q.size).await?;
    Ok(ok(json!({
        "head": h.to_text(),
        "size": h.size,
        "root": to_hex(&h.root),
        "timestamp_ms": h.timestamp_ms,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntriesQuery {
    #[serde(default)]
    from: u64,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    100
}

/// One entry as JSON (the `tally authority log --json` shape too).
pub(crate) fn entry_json(e: &StoredEntry) -> serde_json::Value {
    json!({
        "index": e.index,
        "kind": e.entry.kind.name(),
        "timestamp_ms": e.entry.timestamp_ms,
        "object": to_hex(&e.entry.object),
        "leaf_hash": to_hex(&e.leaf_hash),
    })
}

async fn entries(
    State(state): State<AppState>,
    q: Result<Query<EntriesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let size = state.service.log_size().await?;
    let list = state.service.log_entries(q.from, q.limit).await?;
    Ok(ok(json!({
        "size": size,
        "entries": list.iter().map(entry_json).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InclusionQuery {
    index: Option<u64>,
    size: Option<u64>,
    object_sha256: Option<String>,
}

async fn inclusion(
    State(state): State<AppState>,
    q: Result<Query<InclusionQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let proof = match (q.index, q.object_sha256.as_deref()) {
        (Some(index), None) => state.service.inclusion_proof(index, q.size).await?,
        (None, Some(hex)) if q.size.is_none() => {
            let hash =
                hash_from_hex(hex).ok_or_else(|| bad("object_sha256 must be 64 hex digits"))?;
            state.service.inclusion_proof_of_object(&hash).await?
        }
        _ => {
            return Err(bad(
                "give either index (and optionally size) or object_sha256",
            ));
        }
    };
    Ok(ok(json!({
        "index": proof.index,
        "tree_size": proof.head.size,
        "kind": proof.entry.kind.name(),
        "proof": proof.to_text(),
        "head": proof.head.to_text(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    old: u64,
    new: Option<u64>,
}

async fn consistency(
    State(state): State<AppState>,
    q: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let c = state.service.consistency_proof(q.old, q.new).await?;
    Ok(ok(json!({
        "old_size": c.proof.old_size,
        "new_size": c.proof.new_size,
        "proof": c.proof.to_text(),
        "head": c.head.to_text(),
    })))
}
