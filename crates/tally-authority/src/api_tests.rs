//! The authority API through its router (axum `oneshot`, no socket), with a real SQLite store.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tally_core::keys::{KeyGroup, ProductKey};
use tally_core::time::{Clock, SystemClock};
use tally_core::trust::{TrustAnchor, generate_key, parse_certificate, to_hex};
use tower::ServiceExt;

use crate::Authority;
use crate::http::{AppState, app};
use crate::service::{Service, certificate_from_confirmation, installation_id};
use crate::store::SqliteAuthorityStore;

pub(crate) const TOKEN: &str = "test-operator-token";

pub(crate) struct Fixture {
    pub(crate) router: axum::Router,
    pub(crate) anchor: TrustAnchor,
    pub(crate) dir: tempfile::TempDir,
}

pub(crate) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteAuthorityStore::open(&dir.path().join("authority.db")).expect("db");
    let authority = Authority::generate();
    let anchor = TrustAnchor::new(authority.public());
    let service = Arc::new(Service::new(
        authority,
        Arc::new(store),
        Arc::new(SystemClock),
    ));
    let router = app(AppState {
        service,
        operator_token: Arc::from(TOKEN),
    });
    Fixture {
        router,
        anchor,
        dir,
    }
}

pub(crate) async fn call(
    router: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(body.map_or_else(Body::empty, Body::from))
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

pub(crate) async fn issue(f: &Fixture, group: &str) -> (String, u32) {
    let (status, v) = call(
        &f.router,
        "POST",
        "/v1/keys",
        Some(TOKEN),
        Some(json!({ "group": group }).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    (
        v["key"].as_str().expect("key").to_owned(),
        v["serial"].as_u64().expect("serial") as u32,
    )
}

pub(crate) fn activation(key: &str, hw: u64) -> String {
    let host = generate_key();
    json!({
        "host_key": key,
        "host_public_key": to_hex(host.verifying_key().as_bytes()),
        "hardware_id": format!("{hw:010x}"),
    })
    .to_string()
}

// R22, R16: an activation returns a certificate that verifies under the authority key.
#[tokio::test]
async fn r22_online_activation_returns_a_certificate() {
    let f = fixture();
    let (key, serial) = issue(&f, "server-b").await;
    let (status, v) = call(
        &f.router,
        "POST",
        "/v1/host-activations",
        None,
        Some(activation(&key, 1)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let cert = parse_certificate(v["certificate"].as_str().expect("cert")).expect("parses");
    let host = f
        .anchor
        .verify_certificate(&cert, SystemClock.now())
        .expect("verifies");
    assert_eq!(host.coverage().group, KeyGroup::ServerB);
    assert_eq!(v["serial"], serial);
    assert_eq!(v["usage"]["hosts_used"], 1);
}

// R23 under concurrency: 30 hosts at once, exactly 6 succeed; the 7th gets a clear 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r23_exactly_six_hosts_under_concurrency() {
    let f = fixture();
    let (key, _) = issue(&f, "server-c").await;
    let mut tasks = Vec::new();
    for hw in 0..30u64 {
        let (router, body) = (f.router.clone(), activation(&key, hw));
        tasks.push(tokio::spawn(async move {
            call(&router, "POST", "/v1/host-activations", None, Some(body)).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (status, v) = t.await.expect("join");
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => {
                assert_eq!(v["error"], "limit_reached");
                assert!(
                    v["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("exception")),
                    "{v}"
                );
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(ok, 6);
}

// R23: each host may reactivate 9 times; the 10th reactivation is refused; an exception
// (kept in the audit log) allows more; a revoked key cannot reactivate.
#[tokio::test]
async fn r23_reactivations_exceptions_and_revocation() {
    let f = fixture();
    let (key, serial) = issue(&f, "server-a").await;
    let body = activation(&key, 7);
    for i in 1..=10 {
        let (status, v) = call(
            &f.router,
            "POST",
            "/v1/host-activations",
            None,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "activation {i}: {v}");
    }
    let (status, v) = call(
        &f.router,
        "POST",
        "/v1/host-activations",
        None,
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::CONFLICT, Some("limit_reached")),
        "{v}"
    );
    let exception =
        json!({ "extra_activations": 1, "reason": "motherboard replaced, ticket 42" }).to_string();
    let uri = format!("/v1/keys/{serial}/exception");
    assert_eq!(
        call(&f.router, "POST", &uri, None, Some(exception.clone()))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (status, v) = call(&f.router, "POST", &uri, Some(TOKEN), Some(exception)).await;
    assert_eq!(
        (status, v["max_activations"].as_u64()),
        (StatusCode::OK, Some(11)),
        "{v}"
    );
    assert_eq!(
        call(
            &f.router,
            "POST",
            "/v1/host-activations",
            None,
            Some(body.clone())
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, audit) = call(&f.router, "GET", "/v1/audit", Some(TOKEN), None).await;
    assert!(audit.as_array().is_some_and(|a| a.iter().any(|e| {
        e["detail"]
            .as_str()
            .is_some_and(|d| d.contains("ticket 42"))
    })));
    let revoke = json!({ "reason": "key leaked" }).to_string();
    let (status, _) = call(
        &f.router,
        "POST",
        &format!("/v1/keys/{serial}/revoke"),
        Some(TOKEN),
        Some(revoke),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, v) = call(&f.router, "POST", "/v1/host-activations", None, Some(body)).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("key_revoked")),
        "{v}"
    );
    let (_, detail) = call(
        &f.router,
        "GET",
        &format!("/v1/keys/{serial}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(detail["activations"][0]["count"], 11);
}

// Hostile input: every malformed, oversized or forged request gets a 4xx JSON error.
#[tokio::test]
async fn hostile_requests_get_4xx_json_errors() {
    let f = fixture();
    let (key, _) = issue(&f, "server-a").await;
    let forged = {
        let k: ProductKey = key.parse().expect("key");
        let fields = k.host_fields().expect("host");
        ProductKey::host(fields, k.authenticator() ^ 0xFF).to_string()
    };
    let big = "x".repeat(20_000);
    let cases: Vec<(&str, &str, Option<&str>, Option<String>)> = vec![
        ("POST", "/v1/host-activations", None, Some("{".into())),
        ("POST", "/v1/host-activations", None, Some("[]".into())),
        (
            "POST",
            "/v1/host-activations",
            None,
            Some(json!({"host_key": 5}).to_string()),
        ),
        (
            "POST",
            "/v1/host-activations",
            None,
            Some(
                json!({"host_key": key, "host_public_key": "zz", "hardware_id": "00"}).to_string(),
            ),
        ),
        (
            "POST",
            "/v1/host-activations",
            None,
            Some(activation(&forged, 1)),
        ),
        (
            "POST",
            "/v1/host-activations",
            None,
            Some(activation("BCDFG-HJKMP-QRTVW-XY234-6789B", 1)),
        ),
        (
            "POST",
            "/v1/host-activations",
            None,
            Some(
                json!({"host_key": key, "host_public_key": "00", "hardware_id": "00", "extra": 1})
                    .to_string(),
            ),
        ),
        (
            "POST",
            "/v1/host-activations",
            None,
            Some(format!("{{\"host_key\":\"{big}\"}}")),
        ),
        ("POST", "/v1/host-activations", None, None),
        (
            "POST",
            "/v1/offline-confirmations",
            None,
            Some(json!({"installation_id": "1234567 7654321"}).to_string()),
        ),
        (
            "POST",
            "/v1/offline-confirmations",
            None,
            Some(json!({"installation_id": "x".repeat(5000)}).to_string()),
        ),
        ("GET", "/v1/keys", None, None),
        ("GET", "/v1/keys", Some("wrong"), None),
        ("GET", "/v1/keys/notanumber", Some(TOKEN), None),
        ("GET", "/v1/keys/99999999999", Some(TOKEN), None),
        ("GET", "/v1/keys/42", Some(TOKEN), None),
        (
            "POST",
            "/v1/keys",
            Some(TOKEN),
            Some(json!({"group": "server-z"}).to_string()),
        ),
        (
            "POST",
            "/v1/keys",
            Some(TOKEN),
            Some(json!({"group": "server-a", "generation": 99}).to_string()),
        ),
        (
            "POST",
            "/v1/keys/1/exception",
            Some(TOKEN),
            Some(json!({"reason": " "}).to_string()),
        ),
        ("DELETE", "/v1/keys", Some(TOKEN), None),
        ("GET", "/nope", None, None),
        ("GET", "/v1/host-activations", None, None),
    ];
    for (method, uri, token, body) in cases {
        let shown = body
            .as_deref()
            .map(|b| b.chars().take(60).collect::<String>());
        let (status, v) = call(&f.router, method, uri, token, body).await;
        assert!(
            status.is_client_error(),
            "{method} {uri} {shown:?} -> {status}: {v}"
        );
        assert!(
            v["error"].is_string() && v["message"].is_string(),
            "{method} {uri} -> {v}"
        );
    }
}

// R22 offline: installation ID → confirmation ID → the host rebuilds a valid certificate; a
// typo is named by group.
#[tokio::test]
async fn r22_offline_activation_round_trip() {
    let f = fixture();
    let (key, _) = issue(&f, "client-vl").await;
    let key: ProductKey = key.parse().expect("key");
    let host = generate_key();
    let id = installation_id(key, &host.verifying_key(), &[1, 2, 3, 4, 5]);
    assert_eq!(id.len(), 21);
    let mut typo = id.clone();
    typo[3] = format!(
        "{}{}",
        &typo[3][..6],
        (typo[3].as_bytes()[6] - b'0' + 1) % 10
    );
    let (status, v) = call(
        &f.router,
        "POST",
        "/v1/offline-confirmations",
        None,
        Some(json!({"installation_id": typo.join(" ")}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("group 4 is wrong")),
        "{v}"
    );
    let (status, v) = call(
        &f.router,
        "POST",
        "/v1/offline-confirmations",
        None,
        Some(json!({"installation_id": id.join(" ")}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let confirmation = v["confirmation_id"].as_str().expect("confirmation");
    assert_eq!(confirmation.split(' ').count(), 27);
    let cert =
        certificate_from_confirmation(confirmation, key, &host.verifying_key(), f.anchor.key())
            .expect("rebuilds");
    let verified = f
        .anchor
        .verify_certificate(&cert, SystemClock.now())
        .expect("verifies");
    assert_eq!(verified.coverage().group, KeyGroup::ClientVl);
}

// R25: a MAK's budget holds under concurrency; the same machine reactivating costs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r25_mak_budget_under_concurrency() {
    let f = fixture();
    let (status, v) = call(
        &f.router,
        "POST",
        "/v1/maks",
        Some(TOKEN),
        Some(json!({ "budget": 3 }).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let mak = v["key"].as_str().expect("mak").to_owned();
    let body = |hw: u64| {
        json!({ "mak": mak, "cmid": uuid::Uuid::from_u128(u128::from(hw)), "sku": uuid::Uuid::nil(), "hardware_id": format!("{hw:010x}") })
            .to_string()
    };
    let mut tasks = Vec::new();
    for hw in 0..20u64 {
        let (router, b) = (f.router.clone(), body(hw));
        tasks.push(tokio::spawn(async move {
            call(&router, "POST", "/v1/mak-activations", None, Some(b)).await
        }));
    }
    let mut ok_hw = Vec::new();
    for (hw, t) in tasks.into_iter().enumerate() {
        let (status, v) = t.await.expect("join");
        if status == StatusCode::OK {
            ok_hw.push(hw as u64);
            let claim = tally_core::trust::MakClaim {
                serial: v["serial"].as_u64().expect("serial") as u32,
                cmid: *uuid::Uuid::from_u128(hw as u128).as_bytes(),
                sku: *uuid::Uuid::nil().as_bytes(),
                hardware: {
                    let b = (hw as u64).to_be_bytes();
                    [b[3], b[4], b[5], b[6], b[7]]
                },
                day: v["day"].as_u64().expect("day") as u16,
            };
            let sig: [u8; 64] = tally_core::trust::from_hex(v["signature"].as_str().expect("sig"))
                .and_then(|b| b.try_into().ok())
                .expect("64 bytes");
            claim
                .verify(&f.anchor, &sig)
                .expect("the authority's signature verifies");
        } else {
            assert_eq!(
                (status, v["error"].as_str()),
                (StatusCode::CONFLICT, Some("limit_reached")),
                "{v}"
            );
        }
    }
    assert_eq!(ok_hw.len(), 3);
    let (status, _) = call(
        &f.router,
        "POST",
        "/v1/mak-activations",
        None,
        Some(body(ok_hw[0])),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "reactivating the same machine is not a new one"
    );
}

// X4: operator endpoints check the token before the body is read or parsed: a malformed or
// oversized body without the token is 401, not 400 or 413.
#[tokio::test]
async fn operator_token_is_checked_before_the_body() {
    let f = fixture();
    for body in ["{not json", &"x".repeat(64 * 1024)] {
        let (status, v) = call(&f.router, "POST", "/v1/keys", None, Some(body.to_owned())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
        assert_eq!(v["error"], "unauthorized");
    }
}

// AUTHORITY-API.md: every unreadable body is 400 bad_request (never axum's 415 or 422); a body
// over 16 KiB is 413 too_large.
#[tokio::test]
async fn unreadable_bodies_are_400_and_oversized_413() {
    let f = fixture();
    let (status, v) = call(
        &f.router,
        "POST",
        "/v1/keys",
        Some(TOKEN),
        Some(r#"{"group":"server-c","unknown":1}"#.into()),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let req = Request::builder()
        .method("POST")
        .uri("/v1/host-activations")
        .body(Body::from("{}"))
        .expect("request");
    let resp = f.router.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "no content type");
    let (status, v) = call(
        &f.router,
        "POST",
        "/v1/maks",
        Some(TOKEN),
        Some(format!(
            r#"{{"budget":1,"note":"{}"}}"#,
            "n".repeat(20 * 1024)
        )),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large"))
    );
    let (status, _) = call(&f.router, "GET", "/v1/keys", Some(TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
}
