//! The admin API (R26), metrics and dashboard: token, Prometheus recorder, and the listener
//! (plain HTTP, or TLS when configured), stopped by the host's shutdown token.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tally_admin::HostControl;
use tally_server::HostService;
use tally_store::fsmode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::AdminTls;
use crate::{HostError, paths};

/// Binds the admin API on `listen` and serves it until `shutdown`. Writes its URL to
/// `DATA_DIR/admin.addr` (and, with TLS, a copy of the certificate for local commands to trust)
/// and returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    tls: Option<&AdminTls>,
    service: Arc<HostService>,
    control: Arc<dyn HostControl>,
    dir: &Path,
    shutdown: CancellationToken,
) -> Result<SocketAddr, HostError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| HostError::Bind {
            addr: listen,
            what: "the admin API (use --admin-listen)",
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| HostError::Bind {
        addr: listen,
        what: "the admin API",
        source,
    })?;
    let app = tally_admin::app(tally_admin::AdminState {
        service,
        control,
        token: Arc::from(admin_token(dir)?.as_str()),
        metrics: install_metrics(),
        data_dir: dir.to_owned(),
    });
    let cert_copy = dir.join(paths::ADMIN_CERT_FILE);
    let (acceptor, scheme) = match tls {
        Some(tls) => {
            let acceptor =
                tally_admin::tls::acceptor(&tls.cert, &tls.key).map_err(HostError::Invalid)?;
            // Local `tally host …` commands trust this certificate.
            // (Not `fs::copy`, which would copy the source's mode too: X4.)
            let pem = std::fs::read(&tls.cert).map_err(HostError::read(&tls.cert))?;
            fsmode::write_atomic(&cert_copy, &pem, fsmode::PUBLIC_FILE)
                .map_err(HostError::write(&cert_copy))?;
            (Some(acceptor), "https")
        }
        None => {
            // A copy left by an earlier TLS run would make local commands expect TLS.
            let _ = std::fs::remove_file(&cert_copy);
            (None, "http")
        }
    };
    // Concurrent TLS handshakes with deadlines, header/request/idle deadlines, a connection cap
    // of its own (so it can never take the activation port's file descriptors), body cap.
    tokio::spawn(tally_admin::serve(
        listener,
        acceptor,
        app,
        tally_admin::default_limits(),
        shutdown,
    ));
    let addr_file = dir.join(paths::ADMIN_ADDR_FILE);
    let url = format!("{scheme}://{addr}");
    fsmode::write_atomic(&addr_file, url.as_bytes(), fsmode::PRIVATE_FILE)
        .map_err(HostError::write(&addr_file))?;
    info!(admin_addr = %addr, "admin API, metrics and dashboard listening");
    Ok(addr)
}

/// Installs the Prometheus recorder. It is global: the first host of a process gets it; a
/// second one (tests) runs with metrics off.
pub fn install_metrics() -> Option<PrometheusHandle> {
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    ];
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets);
    match builder.map(PrometheusBuilder::install_recorder) {
        Ok(Ok(handle)) => {
            use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
            describe_counter!(
                "tally_requests_total",
                "Activation requests answered, by result."
            );
            describe_histogram!(
                "tally_request_duration_seconds",
                Unit::Seconds,
                "Time to answer one request."
            );
            describe_histogram!(
                "tally_store_commit_seconds",
                Unit::Seconds,
                "Time for a request's changes to become durable."
            );
            describe_gauge!("tally_connections_open", "Client connections open now.");
            describe_gauge!(
                "tally_pool_clients",
                "Live entries of a pool's table: its count (R2-R4)."
            );
            describe_gauge!("tally_pool_table_size", "A pool's table capacity (R5).");
            describe_gauge!(
                "tally_dns_publish_ok",
                "1 when DNS publishing is on and the last attempt succeeded."
            );
            Some(handle)
        }
        Ok(Err(error)) => {
            warn!(%error, "metrics are off");
            None
        }
        Err(error) => {
            warn!(%error, "metrics are off");
            None
        }
    }
}

/// The admin token in DATA_DIR/admin.token, made on first use (mode 0600).
pub fn admin_token(dir: &Path) -> Result<String, HostError> {
    let path = dir.join(paths::ADMIN_TOKEN_FILE);
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok(t.trim().to_owned());
    }
    let bytes: [u8; 32] = rand::RngExt::random(&mut rand::rng());
    let token = tally_core::hex::to_hex(&bytes);
    tally_authority::dir::write_private(&path, &format!("{token}\n"))
        .map_err(HostError::write(&path))?;
    Ok(token)
}
