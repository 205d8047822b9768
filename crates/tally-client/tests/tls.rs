//! An embedded client reaches an `https` authority (the `tls` feature): a local TLS endpoint with
//! a fresh self-signed certificate, trusted through `AuthorityClient::with_roots`, and refused
//! without it.

#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tally_client::authority::{AuthorityClient, AuthorityClientError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const BODY: &str =
    r#"{"public_key_file":"tally-authority-public-key-v1 00","authority_id":"0011223344556677"}"#;

/// Serves `GET /v1/authority` over TLS on a free loopback port; returns the URL and the CA PEM.
async fn authority() -> (String, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to serve.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                assert!(request.starts_with(b"GET /v1/authority "));
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
                    BODY.len()
                );
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (format!("https://{addr}"), cert.pem())
}

#[tokio::test]
async fn an_https_authority_is_reached_when_its_ca_is_trusted() {
    let (url, ca) = authority().await;
    let client = AuthorityClient::with_roots(&url, Duration::from_secs(10), ca.as_bytes()).unwrap();
    let info = client.info().await.unwrap();
    assert_eq!(info.authority_id, "0011223344556677");
    assert!(
        info.public_key_file
            .starts_with("tally-authority-public-key-v1")
    );
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let (url, _) = authority().await;
    let client = AuthorityClient::new(&url, Duration::from_secs(10)).unwrap();
    let err = client.info().await.unwrap_err();
    assert!(
        matches!(err, AuthorityClientError::Unreachable { .. }),
        "{err:?}"
    );
}

#[test]
fn a_ca_file_that_is_not_pem_is_refused() {
    let err = AuthorityClient::with_roots(
        "https://127.0.0.1:1",
        Duration::from_secs(1),
        b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap_err();
    assert!(matches!(err, AuthorityClientError::Tls(_)), "{err:?}");
}
