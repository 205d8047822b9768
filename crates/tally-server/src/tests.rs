//! In-process server tests over real loopback TCP: the connection cap and shutdown.

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

// The connection cap: with one slot taken, a second client is not served until it frees.
#[tokio::test]
async fn connection_cap_holds_further_clients_until_a_slot_frees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let config = ServerConfig {
        max_connections: 1,
        ..ServerConfig::default()
    };
    let server = tokio::spawn(run(
        listener,
        service(dir.path()).await,
        config,
        shutdown.clone(),
    ));

    let mut first = TcpStream::connect(addr).await.expect("connect");
    assert!(certificate_round_trip(&mut first).await);
    let mut second = TcpStream::connect(addr)
        .await
        .expect("connect (kernel backlog)");
    let waiting = tokio::time::timeout(
        Duration::from_millis(300),
        certificate_round_trip(&mut second),
    )
    .await;
    assert!(
        waiting.is_err(),
        "second client was served while the only slot was taken"
    );
    drop(first);
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 256];
        matches!(second.read(&mut buf).await, Ok(n) if n > 4 && buf[3] == 0x04)
    })
    .await;
    assert_eq!(
        served.ok(),
        Some(true),
        "second client served once the slot freed"
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
