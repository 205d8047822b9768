//! X8 through the authority's router (no socket) on a real SQLite store: every activation's
//! answer carries an inclusion proof that verifies under the authority key; heads and
//! consistency proofs from the log endpoints verify; a row deleted or changed in the database
//! is reported, and a rewrite is caught by a kept head.

use axum::http::StatusCode;
use serde_json::Value;
use tally_core::transparency::{LogError, verify_consistency, verify_head, verify_inclusion};
use tally_core::trust::{parse_certificate, sha256, to_hex};
use tally_log::{ConsistencyProof, EntryKind, InclusionProof, SignedTreeHead};

use crate::api_tests::{activation, call, fixture, issue};

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
}

#[tokio::test]
async fn x8_activations_carry_proofs_and_the_log_only_grows() {
    let f = fixture();
    let (key, _) = issue(&f, "server-c").await;
    let (status, head0) = call(&f.router, "GET", "/v1/log/head", None, None).await;
    assert_eq!(status, StatusCode::OK, "{head0}");
    assert_eq!(head0["size"], 0);
    let mut certs = Vec::new();
    for hw in 0..5u64 {
        let (status, v) = call(
            &f.router,
            "POST",
            "/v1/host-activations",
            None,
            Some(activation(&key, hw)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let proof = InclusionProof::from_text(text(&v["log"], "proof")).expect("proof parses");
        verify_inclusion(&f.anchor, &proof).expect("proof verifies");
        assert_eq!(proof.index, hw);
        assert_eq!(proof.head.size, hw + 1);
        assert_eq!(proof.entry.kind, EntryKind::HostCertificate);
        let cert = parse_certificate(text(&v, "certificate")).expect("cert");
        assert_eq!(
            proof.entry.object,
            cert.to_bytes(),
            "the logged object is the certificate"
        );
        certs.push(cert);
    }
    // A refused activation (the 7th host) logs nothing.
    for hw in 5..7u64 {
        call(
            &f.router,
            "POST",
            "/v1/host-activations",
            None,
            Some(activation(&key, hw)),
        )
        .await;
    }
    let (_, kept) = call(&f.router, "GET", "/v1/log/head?size=3", None, None).await;
    let kept = SignedTreeHead::from_text(text(&kept, "head")).expect("head");
    verify_head(&f.anchor, &kept).expect("signed");
    let (_, now) = call(&f.router, "GET", "/v1/log/head", None, None).await;
    assert_eq!(now["size"], 6);
    // The proof of an object found by its hash, against the whole log.
    let uri = format!(
        "/v1/log/inclusion?object_sha256={}",
        to_hex(&sha256(&certs[1].to_bytes()))
    );
    let (status, v) = call(&f.router, "GET", &uri, None, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let p = InclusionProof::from_text(text(&v, "proof")).expect("proof");
    assert_eq!((p.index, p.head.size), (1, 6));
    verify_inclusion(&f.anchor, &p).expect("verifies");
    let (status, _) = call(
        &f.router,
        "GET",
        "/v1/log/inclusion?object_sha256=00",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&f.router, "GET", "/v1/log/head?size=99", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, e) = call(
        &f.router,
        "GET",
        "/v1/log/entries?from=4&limit=10",
        None,
        None,
    )
    .await;
    assert_eq!(e["entries"].as_array().map(Vec::len), Some(2), "{e}");
    assert_eq!(e["entries"][0]["kind"], "host_certificate");

    let consistency = |v: &Value| {
        (
            ConsistencyProof::from_text(text(v, "proof")).expect("proof"),
            SignedTreeHead::from_text(text(v, "head")).expect("head"),
        )
    };
    let (_, c) = call(&f.router, "GET", "/v1/log/consistency?old=3", None, None).await;
    let (proof, new) = consistency(&c);
    verify_consistency(&f.anchor, &kept, &new, &proof).expect("the log only grew");

    // Someone with the database changes entry 1 and recomputes its leaf hash: the authority's
    // new heads no longer extend the kept one.
    let db = rusqlite::Connection::open(f.dir.path().join("authority.db")).expect("open");
    let mut object = certs[1].to_bytes();
    object[0] ^= 1;
    let mut entry = tally_log::LogEntry {
        kind: EntryKind::HostCertificate,
        timestamp_ms: 0,
        object,
    };
    entry.timestamp_ms = db
        .query_row("SELECT at FROM log_entries WHERE idx = 1", [], |r| r.get(0))
        .expect("row");
    db.execute(
        "UPDATE log_entries SET object = ?1, leaf_hash = ?2 WHERE idx = 1",
        rusqlite::params![entry.object, entry.leaf_hash().to_vec()],
    )
    .expect("update");
    let (_, c) = call(&f.router, "GET", "/v1/log/consistency?old=3", None, None).await;
    let (proof, new) = consistency(&c);
    let err = verify_consistency(&f.anchor, &kept, &new, &proof).expect_err("rewritten");
    assert!(
        matches!(err, LogError::Rewritten { old: 3, new: 6, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("the log was rewritten"), "{err}");

    // A row changed without its leaf hash, then a row deleted: the authority reports the
    // damage instead of serving a head.
    db.execute("UPDATE log_entries SET object = x'00' WHERE idx = 2", [])
        .expect("update");
    let (status, v) = call(&f.router, "GET", "/v1/log/entries", None, None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(v["error"], "log_damaged", "{v}");
    assert!(text(&v, "message").contains("entry 2"), "{v}");
    db.execute("DELETE FROM log_entries WHERE idx = 4", [])
        .expect("delete");
    let (status, v) = call(&f.router, "GET", "/v1/log/head", None, None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(v["error"], "log_damaged");
    assert!(text(&v, "message").contains("entry 4 is missing"), "{v}");
}

#[tokio::test]
async fn x8_offline_and_mak_activations_are_logged_with_their_kind() {
    let f = fixture();
    let (status, v) = call(
        &f.router,
        "POST",
        "/v1/maks",
        Some(crate::api_tests::TOKEN),
        Some(r#"{"budget": 2}"#.into()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let mak = text(&v, "key").to_owned();
    let body = serde_json::json!({
        "mak": mak,
        "cmid": uuid::Uuid::new_v4(),
        "sku": uuid::Uuid::new_v4(),
        "hardware_id": "0102030405",
    });
    let (status, v) = call(
        &f.router,
        "POST",
        "/v1/mak-activations",
        None,
        Some(body.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let p = InclusionProof::from_text(text(&v["log"], "proof")).expect("proof");
    verify_inclusion(&f.anchor, &p).expect("verifies");
    assert_eq!(p.entry.kind, EntryKind::MakClaim);
    // The object is the signed claim followed by its signature.
    let sig = text(&v, "signature");
    assert!(to_hex(&p.entry.object).ends_with(sig));
    assert!(
        p.entry
            .object
            .starts_with(tally_core::trust::MakClaim::SIGNING_CONTEXT)
    );
}
