//! [`crate::serve`] in process over real loopback TCP (X4): silent peers, with and without TLS,
//! do not keep the admin API, `/metrics` or the status away from a real client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tally_authority::Authority;
use tally_core::Catalog;
use tally_core::host::{HostSession, Intervals};
use tally_core::keys::KeyGroup;
use tally_core::time::{Clock, ManualClock, Timestamp};
use tally_core::trust::{HostIdentity, generate_key};
use tally_server::HostService;
use tally_store::Store;
use tally_store::sqlite::{Durability, SqliteStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;

const TOKEN: &str = "t0ken";

/// The budget a real client gets to be answered while the listener is under attack.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

struct Fixed;

#[async_trait]
impl HostControl for Fixed {
    fn settings(&self) -> Settings {
        Settings {
            port: 1688,
            listen: "127.0.0.1:1688".into(),
            activation_interval_secs: 7200,
            renewal_interval_secs: 604_800,
            dns_publish: false,
            priority: "normal".into(),
        }
    }
    async fn apply(&self, _: SettingsChange) -> Result<Settings, String> {
        Err("read-only in this test".into())
    }
    fn dns_state(&self) -> serde_json::Value {
        json!({ "enabled": false })
    }
}

async fn router(dir: &std::path::Path) -> Router {
    let authority = Authority::generate();
    let key = generate_key();
    let now = Timestamp(1_800_000_000_000);
    let cert = authority
        .certify(
            authority.issue_host_key(KeyGroup::ServerC, 1).expect("key"),
            &key.verifying_key(),
            now,
        )
        .expect("cert");
    let session = Arc::new(HostSession::new(
        Arc::new(Catalog::demo()),
        HostIdentity::new(key, cert).expect("identity"),
        Intervals::default(),
    ));
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.join("t.db"), Durability::Normal).expect("db"));
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(now));
    let service = Arc::new(
        HostService::open(session, store, clock)
            .await
            .expect("service"),
    );
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    app(AdminState {
        service,
        control: Arc::new(Fixed),
        token: Arc::from(TOKEN),
        metrics: Some(metrics),
        data_dir: dir.to_owned(),
    })
}

/// A self-signed certificate for 127.0.0.1 made by `openssl`, or `None` (test skipped).
fn certificate(
    test: &str,
    dir: &std::path::Path,
) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = (dir.join("admin.crt"), dir.join("admin.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=tally-admin"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    match made {
        Ok(o) if o.status.success() => Some((cert, key)),
        other => {
            tally_test_support::skip(
                test,
                &format!("openssl could not make a test certificate: {other:?}"),
            );
            None
        }
    }
}

/// One HTTP/1.1 request with `Connection: close`; the status line and body.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, path: &str) -> String {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn https_get(addr: SocketAddr, cert: &std::path::Path, path: &str) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).expect("pem") {
        roots.add(c.expect("cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    request(tls, path).await
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    request(TcpStream::connect(addr).await.expect("connect"), path).await
}

/// Opens `n` TCP connections that never send a byte (no TLS handshake, no request).
async fn silent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(TcpStream::connect(addr).await.expect("connect"));
    }
    v
}

// The finding: TLS handshakes ran one at a time in `accept`, so 5 silent connections kept the
// admin API away for 49 s. Now each handshake runs in its own task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_peers_do_not_delay_metrics_or_status() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some((cert, key)) = certificate(
        "silent_tls_peers_do_not_delay_metrics_or_status",
        tmp.path(),
    ) else {
        return;
    };
    let acceptor = tls::acceptor(&cert, &key).expect("acceptor");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        Some(acceptor),
        router(tmp.path()).await,
        default_limits(),
        shutdown.clone(),
    ));
    let _silent = silent(addr, 20).await;
    let answered = tokio::time::timeout(ANSWER_WITHIN, async {
        (
            https_get(addr, &cert, "/metrics").await,
            https_get(addr, &cert, "/api/v1/status").await,
        )
    })
    .await
    .expect("answered within 2 s while 20 peers stay silent");
    assert!(answered.0.starts_with("HTTP/1.1 200"), "{}", answered.0);
    assert!(answered.1.starts_with("HTTP/1.1 200"), "{}", answered.1);
    assert!(answered.1.contains("\"certificate\""), "{}", answered.1);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops with silent peers still connected")
        .expect("join");
}

// More silent peers than the listener's cap: the idlest are evicted, real clients answered, and
// the listener never holds more than its cap of descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_over_the_cap_are_evicted_for_real_clients() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let limits = HttpLimits {
        max_connections: 8,
        max_per_source: 1000,
        ..default_limits()
    };
    let admission = tally_net::Admission::new(
        "admin-test",
        tally_net::AdmissionLimits {
            max_connections: limits.max_connections,
            max_per_source: limits.max_per_source,
        },
    );
    let server = tokio::spawn(tally_net::http::serve_with(
        listener,
        None,
        router(tmp.path()).await,
        limits,
        shutdown.clone(),
        Arc::clone(&admission),
    ));
    let _silent = silent(addr, 40).await;
    let answered = tokio::time::timeout(ANSWER_WITHIN, async {
        (
            http_get(addr, "/metrics").await,
            http_get(addr, "/api/v1/status").await,
        )
    })
    .await
    .expect("answered within 2 s while 40 peers stay silent");
    assert!(answered.0.starts_with("HTTP/1.1 200"), "{}", answered.0);
    assert!(answered.1.starts_with("HTTP/1.1 200"), "{}", answered.1);
    assert!(admission.len() <= 8, "cap held: {}", admission.len());
    assert!(admission.evicted() >= 32, "evicted {}", admission.evicted());
    shutdown.cancel();
    server.await.expect("join");
}

// A request head never finished is cut at the header deadline.
#[tokio::test]
async fn a_request_head_trickled_past_the_header_deadline_is_cut() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let limits = HttpLimits {
        header_timeout: Duration::from_millis(300),
        ..default_limits()
    };
    let server = tokio::spawn(serve(
        listener,
        None,
        router(tmp.path()).await,
        limits,
        shutdown.clone(),
    ));
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a request head never finished is cut");

    shutdown.cancel();
    server.await.expect("join");
}
