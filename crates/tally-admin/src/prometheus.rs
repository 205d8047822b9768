//! `/metrics`: the Prometheus exposition, with the gauges read at scrape time.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use serde_json::json;
use tally_core::time::{Clock, SystemClock, Timestamp};

use crate::{AdminState, ApiError};

pub(crate) async fn endpoint(State(state): State<AdminState>) -> Response {
    let Some(handle) = &state.metrics else {
        return ApiError(StatusCode::NOT_FOUND, "not_found", "metrics are off".into())
            .into_response();
    };
    // Gauges that are cheaper to read at scrape time than to maintain per request.
    let session = state.service.session();
    // When the database is unreachable the pool gauges keep their last values; the request
    // counters show the storage failures.
    for p in state.service.counts().await.unwrap_or_default() {
        let name = session
            .catalog()
            .pool(p.pool)
            .map_or_else(|| p.pool.to_string(), |x| x.name.clone());
        metrics::gauge!("tally_pool_clients", "pool" => name.clone()).set(f64::from(p.count));
        metrics::gauge!("tally_pool_table_size", "pool" => name.clone()).set(f64::from(p.capacity));
        // R1: each threshold of the pool, as KMS's /dlv lists them beside the count.
        for e in session
            .catalog()
            .editions()
            .iter()
            .filter(|e| e.pool == p.pool)
        {
            let kind = if e.kind == tally_core::catalog::EditionKind::Server {
                "server"
            } else {
                "client"
            };
            metrics::gauge!("tally_pool_threshold", "pool" => name.clone(), "kind" => kind)
                .set(f64::from(e.threshold));
        }
    }
    DESCRIBE.call_once(describe_gauges);
    let store = state.service.store();
    metrics::gauge!("tally_storage_up").set(if store.storage_error().is_none() {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("tally_registry_full").set(if store.registry_full() { 1.0 } else { 0.0 });
    // Issue 21: the event log's cap (event 1011), and the rows this host deleted for it.
    let cap = store.event_cap();
    metrics::gauge!("tally_events_at_cap").set(if cap.at_cap { 1.0 } else { 0.0 });
    metrics::counter!("tally_events_pruned_total").absolute(cap.pruned_total);
    // Issue 21: 1 when an acknowledged activation survives a failover (synchronous replication
    // in sync); absent on an embedded database.
    if let Some(r) = store.replication() {
        metrics::gauge!("tally_replication_synchronous").set(if r.survives_failover() {
            1.0
        } else {
            0.0
        });
    }
    // X5: the clock check's findings; 0 for every reference that does not contradict the clock.
    let clock = state.service.clock_watch().status();
    metrics::gauge!("tally_clock_suspect").set(if clock.suspect() { 1.0 } else { 0.0 });
    metrics::gauge!("tally_clock_retention_held_back").set(
        if clock.retention_held_back.is_some() {
            1.0
        } else {
            0.0
        },
    );
    for reference in [
        tally_core::clock::Reference::Database,
        tally_core::clock::Reference::Clients,
        tally_core::clock::Reference::StoredData,
        tally_core::clock::Reference::TrustedMark,
        tally_core::clock::Reference::Monotonic,
    ] {
        let skew = clock
            .findings
            .iter()
            .find(|f| f.reference == reference)
            .map_or(0, |f| f.skew_ms);
        metrics::gauge!("tally_clock_skew_seconds", "reference" => reference.name())
            .set(skew as f64 / 1000.0);
    }
    let not_after = Timestamp(
        session
            .identity()
            .certificate()
            .body
            .not_after
            .saturating_mul(1000),
    );
    // Prometheus' base unit is the second (promtool refuses a `_days` name); alert rules divide
    // by 86400.
    let seconds_left = (not_after.millis() - SystemClock.now().millis()).max(0) / 1000;
    metrics::gauge!("tally_certificate_expiry_seconds").set(seconds_left as f64);
    let dns = state.control.dns_state();
    let publishing =
        dns.get("enabled") == Some(&json!(true)) && dns.get("ok") == Some(&json!(true));
    metrics::gauge!("tally_dns_publish_ok").set(if publishing { 1.0 } else { 0.0 });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

static DESCRIBE: std::sync::Once = std::sync::Once::new();

/// Help texts of the gauges this crate sets (the host describes the request metrics).
fn describe_gauges() {
    use metrics::describe_gauge;
    describe_gauge!(
        "tally_pool_threshold",
        "An edition kind's threshold in a pool (R1): the count it needs to activate."
    );
    describe_gauge!(
        "tally_storage_up",
        "1 while the store commits, 0 while commits fail or requests outlive their commit deadline, wait on a pool lock or find no connection (clients get storage_failure)."
    );
    describe_gauge!(
        "tally_replication_synchronous",
        "Fleet: 1 when commits are replicated synchronously to a standby in sync (an acknowledged activation survives a failover), else 0."
    );
    describe_gauge!(
        "tally_registry_full",
        "1 when the registry reached its cap: new machines are counted but not registered."
    );
    describe_gauge!(
        "tally_events_at_cap",
        "1 while the event log is at its cap (event_cap): its oldest events are deleted to make room (event 1011)."
    );
    metrics::describe_counter!(
        "tally_events_pruned_total",
        "Event rows this host deleted because the event log was over its cap (event_cap), since it started."
    );
    describe_gauge!(
        "tally_clock_suspect",
        "1 while something contradicts the host's clock (X5; event 1007), else 0."
    );
    describe_gauge!(
        "tally_clock_skew_seconds",
        "The host's clock minus each reference that contradicts it (0: no contradiction)."
    );
    describe_gauge!(
        "tally_clock_retention_held_back",
        "1 while retention is held back because its clock is in doubt (X5; event 1008)."
    );
    describe_gauge!(
        "tally_certificate_expiry_seconds",
        "Seconds until the host certificate expires (0 once it has)."
    );
}
