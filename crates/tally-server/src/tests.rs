//! In-process server tests over real loopback TCP: admission (eviction, per-source cap), the
//! whole-frame deadline and shutdown.

use std::sync::Arc;
use std::time::Duration;

use tally_authority::Authority;
use tally_core::Catalog;
use tally_core::host::{HostSession, Intervals};
use tally_core::keys::KeyGroup;
use tally_core::time::{Clock, ManualClock, Timestamp};
use tally_core::trust::{HostIdentity, generate_key};
use tally_proto::{Message, PROTOCOL_VERSION};
use tally_store::Store;
use tally_store::sqlite::{Durability, SqliteStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;

async fn service(dir: &std::path::Path) -> Arc<HostService> {
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
    Arc::new(
        HostService::open(session, store, clock)
            .await
            .expect("service"),
    )
}

async fn certificate_round_trip(stream: &mut TcpStream) -> bool {
    if stream
        .write_all(&Message::CertificateRequest.encode())
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 256];
    matches!(stream.read(&mut buf).await, Ok(n) if n > 4 && buf[3] == 0x04)
}

async fn start(
    dir: &std::path::Path,
    config: ServerConfig,
) -> (
    std::net::SocketAddr,
    Arc<Admission>,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), ServerError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let admission = Admission::new(
        "test",
        AdmissionLimits {
            max_connections: config.max_connections,
            max_per_source: config.max_connections_per_source,
        },
    );
    let server = tokio::spawn(run_admitted(
        listener,
        service(dir).await,
        config,
        shutdown.clone(),
        None,
        Arc::clone(&admission),
    ));
    (addr, admission, shutdown, server)
}

/// Connects from the loopback address `source` (127.0.0.x), so one test has several sources.
async fn connect_from(source: [u8; 4], addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind((std::net::Ipv4Addr::from(source), 0).into())
        .expect("bind source");
    socket.connect(addr).await.expect("connect")
}

/// Waits (polling, bounded) until the registry holds `n` connections.
async fn wait_registered(admission: &Admission, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while admission.len() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "registry holds {} connections, expected {n}",
            admission.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether the server closed `stream` (EOF or reset) without sending anything.
async fn closed_silently(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

// X4: at the global cap a new client is served; the connection idle the longest is closed
// without a reply, a connection whose request is half received goes next, and accept never
// waits for a slot.
#[tokio::test]
async fn at_the_cap_the_idlest_connection_is_evicted_and_the_new_client_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ServerConfig {
        max_connections: 3,
        max_connections_per_source: 100,
        ..ServerConfig::default()
    };
    let (addr, admission, shutdown, server) = start(dir.path(), config).await;
    let mut oldest = TcpStream::connect(addr).await.expect("connect");
    wait_registered(&admission, 1).await;
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(&[0]).await.expect("first byte of a frame");
    wait_registered(&admission, 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while admission.count_in(tally_net::Phase::Receiving) != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first byte not seen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    wait_registered(&admission, 3).await;

    let mut client = TcpStream::connect(addr).await.expect("connect");
    assert!(
        certificate_round_trip(&mut client).await,
        "the new client is answered"
    );
    assert!(closed_silently(&mut oldest).await, "the idlest went first");
    assert_eq!(admission.evicted(), 1);

    // The client is idle now, but newer than `slow` (receiving since before it connected).
    let mut second = TcpStream::connect(addr).await.expect("connect");
    assert!(certificate_round_trip(&mut second).await);
    assert!(closed_silently(&mut slow).await, "then the slow one");
    assert_eq!(admission.evicted(), 2);
    let mut buf = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(50), idle.read(&mut buf))
            .await
            .is_err(),
        "the newer idle connection is still open"
    );
    shutdown.cancel();
    server.await.expect("join").expect("clean stop");
}

// X4: one source never holds more than its cap (loopback included): its own idlest connection
// makes room for its new one; other sources are untouched.
#[tokio::test]
async fn per_source_cap_evicts_within_the_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ServerConfig {
        max_connections: 100,
        max_connections_per_source: 2,
        ..ServerConfig::default()
    };
    let (addr, admission, shutdown, server) = start(dir.path(), config).await;
    let mut other = connect_from([127, 0, 0, 3], addr).await;
    wait_registered(&admission, 1).await;
    let mut a = connect_from([127, 0, 0, 2], addr).await;
    wait_registered(&admission, 2).await;
    let _b = connect_from([127, 0, 0, 2], addr).await;
    wait_registered(&admission, 3).await;
    let mut third = connect_from([127, 0, 0, 2], addr).await;
    assert!(
        certificate_round_trip(&mut third).await,
        "the new connection is served"
    );
    assert!(
        closed_silently(&mut a).await,
        "the source's idlest made room"
    );
    assert_eq!(admission.evicted(), 1);
    assert_eq!(admission.len(), 3, "the source still holds two");
    assert!(
        certificate_round_trip(&mut other).await,
        "the other source's older connection was not touched"
    );
    shutdown.cancel();
    server.await.expect("join").expect("clean stop");
}

// PROTOCOL.md "Transport": the read timeout bounds the whole frame from its first byte. A peer
// trickling one byte per 600 ms never waits more than the 1 s allowed per read, but its 4-byte
// frame would need 1.8 s: it is closed instead of answered.
#[tokio::test]
async fn a_trickled_frame_is_cut_at_the_whole_frame_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ServerConfig {
        read_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let (addr, _admission, shutdown, server) = start(dir.path(), config).await;
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    let frame = Message::CertificateRequest.encode();
    let mut answered = false;
    for byte in &frame {
        if slow.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(600), slow.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(n)) if n > 4 && buf[3] == 0x04 => {
                answered = true;
                break;
            }
            Ok(_) => break, // closed
        }
    }
    assert!(!answered, "a frame trickled past the deadline was answered");
    let mut fast = TcpStream::connect(addr).await.expect("connect");
    assert!(
        certificate_round_trip(&mut fast).await,
        "a whole frame in time is answered"
    );
    shutdown.cancel();
    server.await.expect("join").expect("clean stop");
}

// Graceful stop: a request already being received is finished; idle connections close.
#[tokio::test]
async fn shutdown_finishes_the_request_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(run(
        listener,
        service(dir.path()).await,
        ServerConfig::default(),
        shutdown.clone(),
    ));
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    // Half a frame is in flight when shutdown comes.
    busy.write_all(&[0, 2, PROTOCOL_VERSION])
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    busy.write_all(&[0x03]).await.expect("rest of the frame");
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), busy.read(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    assert!(
        n > 4 && buf[3] == 0x04,
        "the in-flight certificate request was answered"
    );
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("closed")
        .expect("read");
    assert_eq!(n, 0, "idle connection closed on shutdown");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("stopped")
        .expect("join")
        .expect("ok");
}
