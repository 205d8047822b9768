//! Issue 21 part 5: TLS to PostgreSQL, against a real server that accepts TLS connections only
//! (`hostssl`), with a CA and a certificate for `localhost` that the test makes. What each libpq
//! `sslmode` accepts and refuses, and that every refusal is one clear sentence that names what
//! to check and never the password. (SPEC X3: a database error says what is wrong.)

#![cfg(feature = "postgres")]

use tally_db::pg;
use tally_test_support::postgres::PgServer;
use tally_test_support::postgres::tls::{CERT_HOST, write_unrelated_ca};

/// Connects and runs one query; the error text when either fails.
async fn try_connect(url: &str) -> Result<(), String> {
    let pool = pg::connect(url).await.map_err(|e| e.to_string())?;
    let client = pg::client(&pool, &pg::describe(url))
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let encrypted: bool = row.get(0);
    assert!(encrypted, "the session to {url} is not encrypted");
    Ok(())
}

fn with_password(url: &str) -> String {
    url.replacen("postgres://postgres@", "postgres://postgres:Sw0rdfish@", 1)
}

#[tokio::test]
async fn each_sslmode_against_a_tls_only_server() {
    let Some(server) = PgServer::start_tls() else {
        return;
    };
    let port = server.port();

    // verify-full with the CA and the name the certificate lists: encrypted, authenticated.
    try_connect(&with_password(&server.tls_url(
        CERT_HOST,
        "postgres",
        "verify-full",
    )))
    .await
    .expect("verify-full to localhost");

    // verify-full to an address the certificate does not name: refused, saying so.
    let e = try_connect(&with_password(&server.tls_url(
        "127.0.0.1",
        "postgres",
        "verify-full",
    )))
    .await
    .expect_err("verify-full must check the name");
    assert!(e.contains("does not name 127.0.0.1"), "{e}");
    assert!(e.contains("subjectAltName"), "{e}");
    assert_eq!(e.matches("does not name").count(), 1, "said once: {e}");
    assert!(!e.contains("Sw0rdfish"), "{e}");

    // verify-ca checks the chain only: the same address is accepted.
    try_connect(&server.tls_url("127.0.0.1", "postgres", "verify-ca"))
        .await
        .expect("verify-ca ignores the name");

    // A CA that did not sign the server's certificate: refused, naming sslrootcert.
    let dir = tempfile::tempdir().expect("tempdir");
    let other = dir.path().join("other-ca.pem");
    write_unrelated_ca(&other);
    let url = format!(
        "postgres://postgres:Sw0rdfish@{CERT_HOST}:{port}/postgres?sslmode=verify-full&sslrootcert={}",
        other.display()
    );
    let e = try_connect(&url).await.expect_err("wrong CA");
    assert!(e.contains("is not issued by the CA in sslrootcert"), "{e}");
    assert!(e.contains(&other.display().to_string()), "{e}");
    assert_eq!(e.matches("sslrootcert").count(), 2, "one sentence: {e}");
    assert!(!e.contains("Sw0rdfish"), "{e}");

    // require: encrypted without checking (any CA, any name).
    try_connect(&format!(
        "postgres://postgres@127.0.0.1:{port}/postgres?sslmode=require"
    ))
    .await
    .expect("require");

    // disable: the server itself refuses a plain connection (hostssl), and the error says TLS.
    let e = try_connect(&format!(
        "postgres://postgres:Sw0rdfish@127.0.0.1:{port}/postgres?sslmode=disable"
    ))
    .await
    .expect_err("plain TCP must be refused");
    assert!(e.contains("refused an unencrypted connection"), "{e}");
    assert!(e.contains("sslmode=verify-full&sslrootcert="), "{e}");
    assert!(!e.contains("Sw0rdfish"), "{e}");

    // verify-full without sslrootcert: refused before any connection, naming the parameter.
    let e = try_connect(&format!(
        "postgres://postgres@{CERT_HOST}:{port}/postgres?sslmode=verify-full"
    ))
    .await
    .expect_err("no CA");
    assert!(e.contains("needs sslrootcert=FILE"), "{e}");
}

// A server without TLS: `require` is refused with advice; the default `prefer` falls back to
// plain TCP as libpq does (the existing fleet tests run that way).
#[tokio::test]
async fn require_against_a_server_without_tls_says_so() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let e = pg::connect(&format!("{}?sslmode=require", server.url("postgres")))
        .await
        .expect_err("no TLS on the server");
    let e = e.to_string();
    assert!(e.contains("does not accept TLS connections"), "{e}");
    pg::connect(&server.url("postgres"))
        .await
        .expect("prefer falls back");
}
