//! R16: the client accepts only responses that chain to its authority, answer its own request,
//! and come from a host whose group covers its edition. Attackers here are real TCP peers: a
//! man-in-the-middle proxy in front of a real host process, and rogue hosts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tally_authority::Authority;
use tally_client::{ActivationParams, ClientError, Connector};
use tally_core::counting::CountTables;
use tally_core::host::{HostSession, Intervals, Outcome};
use tally_core::keys::KeyGroup;
use tally_core::time::{Clock, SystemClock};
use tally_core::trust::{
    HostIdentity, TrustAnchor, TrustError, generate_key, parse_authority_public,
};
use tally_core::{Catalog, EditionKind};
use tally_proto::{LicenseState, MachineName, Message, ResultCode};
use tally_test_support::HostProcess;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::bin;

fn params(kind: EditionKind, group: KeyGroup) -> ActivationParams {
    let edition = Catalog::demo()
        .editions()
        .iter()
        .find(|e| e.kind == kind && e.group == group)
        .cloned()
        .expect("demo edition");
    ActivationParams {
        cmid: Uuid::new_v4(),
        edition,
        machine_name: MachineName::lossy("victim"),
        license_state: LicenseState::InitialGrace,
        grace_remaining_minutes: 1000,
        installation: Some(tally_client::connect::Installation::new(
            1,
            u32::MAX,
            [0; 8],
        )),
    }
}

async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    tally_client::connect::read_frame(s).await.ok()
}

/// A proxy to `upstream` that passes certificate traffic through and lets `edit` rewrite each
/// activation response.
async fn mitm<F>(upstream: SocketAddr, edit: F) -> SocketAddr
where
    F: Fn(Vec<u8>) -> Vec<u8> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let edit = Arc::new(edit);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let edit = Arc::clone(&edit);
            tokio::spawn(async move {
                let Ok(mut host) = TcpStream::connect(upstream).await else {
                    return;
                };
                while let Some(req) = read_frame(&mut client).await {
                    if host.write_all(&req).await.is_err() {
                        return;
                    }
                    let Some(resp) = read_frame(&mut host).await else {
                        return;
                    };
                    let resp =
                        if matches!(Message::decode(&resp), Ok(Message::ActivationResponse(_))) {
                            edit(resp)
                        } else {
                            resp
                        };
                    if client.write_all(&resp).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn anchor_of(host: &HostProcess) -> TrustAnchor {
    parse_authority_public(
        &std::fs::read_to_string(host.data_dir.join("authority.pub")).expect("read"),
    )
    .expect("authority key")
}

// R16: a count altered in transit fails the signature check.
#[tokio::test]
async fn r16_forged_count_is_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_dev(bin(), tmp.path(), &[]);
    let proxy = mitm(host.addr, |mut bytes| {
        // count is at offset 4 + 16 + 32 + 4 (after header, nonce, fingerprint, result).
        bytes[4 + 16 + 32 + 4 + 3] = 25;
        bytes
    })
    .await;
    let c = Connector::new(anchor_of(&host), Duration::from_secs(5));
    let p = params(EditionKind::Client, KeyGroup::ClientVl);
    let err = c
        .activate(&proxy.to_string(), &p, SystemClock.now())
        .await
        .expect_err("forged");
    assert!(
        matches!(err, ClientError::Trust(TrustError::BadResponseSignature)),
        "{err}"
    );
    // The same client through no proxy is fine.
    let ok = c
        .activate(&host.addr.to_string(), &p, SystemClock.now())
        .await
        .expect("genuine");
    assert_eq!(ok.count, 1);
}

// R16: a genuine response replayed to another request is rejected (nonce).
#[tokio::test]
async fn r16_replayed_response_is_rejected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_dev(bin(), tmp.path(), &[]);
    let recorded: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(None));
    let rec = Arc::clone(&recorded);
    let proxy = mitm(host.addr, move |bytes| {
        let mut slot = rec.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(bytes).clone()
    })
    .await;
    let c = Connector::new(anchor_of(&host), Duration::from_secs(5));
    let p = params(EditionKind::Server, KeyGroup::ServerA);
    c.activate(&proxy.to_string(), &p, SystemClock.now())
        .await
        .expect("first response is genuine");
    let err = c
        .activate(&proxy.to_string(), &p, SystemClock.now())
        .await
        .expect_err("replay");
    assert!(
        matches!(err, ClientError::Trust(TrustError::NonceMismatch)),
        "{err}"
    );
}

/// A host served by `identity`, optionally lying about the count.
async fn rogue_host(identity: HostIdentity, lie: Option<u32>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let session = Arc::new(HostSession::new(
        Arc::new(Catalog::demo()),
        identity,
        Intervals::default(),
    ));
    let tables = Arc::new(std::sync::Mutex::new(CountTables::default()));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (session, tables) = (Arc::clone(&session), Arc::clone(&tables));
            tokio::spawn(async move {
                while let Some(frame) = read_frame(&mut s).await {
                    let reply = match session.handle(&frame, SystemClock.now()) {
                        Outcome::Reply(r) | Outcome::Close { reply: r, .. } => r,
                        Outcome::Activation(mut p) => {
                            let honest = p
                                .changes
                                .counting
                                .map_or(0, |req| tables.lock().expect("lock").apply(&req).0);
                            let count = match lie {
                                Some(count) => {
                                    // The rogue signs its lie with its own (certified) key.
                                    p.response.result = ResultCode::SUCCESS;
                                    count
                                }
                                None => honest,
                            };
                            session.seal(&p, count)
                        }
                    };
                    if s.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

// R16: a host certified by another authority is not trusted, however well it signs.
#[tokio::test]
async fn r16_host_of_another_authority_is_rejected() {
    let trusted = Authority::generate();
    let stranger = Authority::generate();
    let host_key = generate_key();
    let cert = stranger
        .certify(
            stranger.issue_host_key(KeyGroup::ServerC, 1).expect("key"),
            &host_key.verifying_key(),
            SystemClock.now(),
        )
        .expect("cert");
    let addr = rogue_host(HostIdentity::new(host_key, cert).expect("identity"), None).await;
    let c = Connector::new(TrustAnchor::new(trusted.public()), Duration::from_secs(5));
    let err = c
        .activate(
            &addr.to_string(),
            &params(EditionKind::Server, KeyGroup::ServerA),
            SystemClock.now(),
        )
        .await
        .expect_err("untrusted");
    assert!(
        matches!(err, ClientError::Trust(TrustError::UnknownAuthority)),
        "{err}"
    );
}

// R16 + R21: a genuine client-vl host that signs a count for a server edition is rejected.
#[tokio::test]
async fn r16_r21_wrong_group_response_is_rejected() {
    let authority = Authority::generate();
    let host_key = generate_key();
    let cert = authority
        .certify(
            authority
                .issue_host_key(KeyGroup::ClientVl, 1)
                .expect("key"),
            &host_key.verifying_key(),
            SystemClock.now(),
        )
        .expect("cert");
    let addr = rogue_host(
        HostIdentity::new(host_key, cert).expect("identity"),
        Some(50),
    )
    .await;
    let c = Connector::new(TrustAnchor::new(authority.public()), Duration::from_secs(5));
    let err = c
        .activate(
            &addr.to_string(),
            &params(EditionKind::Server, KeyGroup::ServerC),
            SystemClock.now(),
        )
        .await
        .expect_err("group does not cover");
    assert!(
        matches!(
            err,
            ClientError::Trust(TrustError::GroupDoesNotCover { .. })
        ),
        "{err}"
    );
    // Its client-vl editions are fine.
    let ok = c
        .activate(
            &addr.to_string(),
            &params(EditionKind::Client, KeyGroup::ClientVl),
            SystemClock.now(),
        )
        .await
        .expect("covered");
    assert_eq!(ok.count, 50);
}
