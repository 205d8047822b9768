//! Issue 10, the authority on PostgreSQL (X2) with real processes: several `tally authority run`
//! processes on one real PostgreSQL server share the R23 limits exactly, see each other's
//! revocations, survive each other's kill -9, migrate an empty database together, and refuse a
//! database written by a newer Tally.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use tally_core::trust::{generate_key, to_hex};
use tally_test_support::authority::AuthorityDir;
use tally_test_support::postgres::PgServer;
use tally_test_support::{Process, tally, tally_json};

use crate::bin;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A fresh server with an empty database `authority`, or `None` when the test is skipped.
fn pg() -> Option<PgServer> {
    let server = PgServer::start()?;
    server.create_database("authority");
    Some(server)
}

/// `tally authority init` in `root/authority`; returns the directory and the operator token.
fn init(root: &Path) -> (PathBuf, String) {
    let authority = AuthorityDir::init(bin(), root.join("authority"));
    (authority.dir.clone(), authority.token())
}

fn run(dir: &Path, url: &str) -> (Process, std::net::SocketAddr) {
    AuthorityDir::at(bin(), dir).on_database(url).run()
}

fn host_activation(key: &str, hw: u64) -> Value {
    json!({
        "host_key": key,
        "host_public_key": to_hex(generate_key().verifying_key().as_bytes()),
        "hardware_id": format!("{hw:010x}"),
    })
}

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut req = crate::http()
        .post(format!("http://{addr}{path}"))
        .json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("authority answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(addr: std::net::SocketAddr, path: &str, token: &str) -> (u16, Value) {
    let resp = crate::http()
        .get(format!("http://{addr}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("authority answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

// R23, X2: 30 hosts activate one key at once through two processes on one database: exactly 6
// certificates. A revocation through one process holds in the other; after kill -9 of one, the
// other keeps serving. The CLI reads the same state through TALLY_DATABASE_URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_share_the_limits_and_the_revocations() {
    let Some(server) = pg() else { return };
    let url = server.url("authority");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, token) = init(tmp.path());
    let (code, key) = tally_json(
        bin(),
        &[
            "authority",
            "issue-host-key",
            "--dir",
            s(&dir),
            "--database",
            &url,
            "--group",
            "server-c",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{key}");
    let (host_key, serial) = (
        key["key"].as_str().expect("key").to_owned(),
        key["serial"].as_u64().expect("serial"),
    );
    assert!(
        !dir.join("authority.db").exists(),
        "with --database the state is not in the directory"
    );
    let (mut a, addr_a) = run(&dir, &url);
    let (b, addr_b) = run(&dir, &url);

    let mut tasks = Vec::new();
    for hw in 0..30u64 {
        let addr = if hw % 2 == 0 { addr_a } else { addr_b };
        let body = host_activation(&host_key, hw);
        tasks.push(tokio::spawn(async move {
            post(addr, "/v1/host-activations", None, &body).await
        }));
    }
    let (mut certified, mut refused) = (0, 0);
    for t in tasks {
        match t.await.expect("join") {
            (200, v) => {
                assert!(
                    v["certificate"]
                        .as_str()
                        .is_some_and(|c| c.contains("tally-host-certificate-v1")),
                    "{v}"
                );
                certified += 1;
            }
            (409, v) => {
                assert_eq!(v["error"], "limit_reached", "{v}");
                refused += 1;
            }
            (status, v) => panic!("unexpected {status}: {v}"),
        }
    }
    assert_eq!((certified, refused), (6, 24), "R23 holds across processes");
    let (status, detail) = get(addr_a, &format!("/v1/keys/{serial}"), &token).await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["hosts_used"], 6);
    assert_eq!(detail["activations"].as_array().map(Vec::len), Some(6));

    // Revoke through A; B refuses the next activation at once.
    let (status, v) = post(
        addr_a,
        &format!("/v1/keys/{serial}/revoke"),
        Some(&token),
        &json!({ "reason": "chargeback" }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = post(
        addr_b,
        "/v1/host-activations",
        None,
        &host_activation(&host_key, 100),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (403, Some("key_revoked")),
        "{v}"
    );

    // kill -9 A: B keeps serving, issuing and activating.
    a.kill9();
    let (status, k2) = post(
        addr_b,
        "/v1/keys",
        Some(&token),
        &json!({ "group": "server-a" }),
    )
    .await;
    assert_eq!(status, 201, "{k2}");
    let key2 = k2["key"].as_str().expect("key").to_owned();
    let (status, v) = post(
        addr_b,
        "/v1/host-activations",
        None,
        &host_activation(&key2, 1),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["hosts_used"], 1);

    // The CLI sees the same state, with the URL from the environment.
    let out = Command::new(bin())
        .args(["authority", "keys", "--dir", s(&dir), "--json"])
        .env("TALLY_DATABASE_URL", &url)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tally");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys: Value = serde_json::from_slice(&out.stdout).expect("json");
    let keys = keys.as_array().expect("array");
    assert_eq!(keys.len(), 2);
    let first = keys
        .iter()
        .find(|k| k["serial"] == serial)
        .expect("first key");
    assert_eq!(first["hosts_used"], 6);
    assert!(first["revoked_at"].is_number(), "{first}");
    drop(b);
}

// Three processes started at once on an empty database all come up: the migrations run under
// an advisory lock, so they do not race.
#[test]
fn three_processes_start_at_once_on_an_empty_database() {
    let Some(server) = pg() else { return };
    let url = server.url("authority");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, _) = init(tmp.path());
    let started: Vec<(Process, std::net::SocketAddr)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3).map(|_| scope.spawn(|| run(&dir, &url))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("started"))
            .collect()
    });
    let version = server.psql(
        "authority",
        "SELECT count(*) || ':' || max(version) FROM tally_schema",
    );
    let current = tally_authority::store::postgres::SCHEMA_VERSION;
    assert_eq!(
        version,
        format!("1:{current}"),
        "one schema row, the current version"
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for (_, addr) in &started {
        let status = rt.block_on(async {
            crate::http()
                .get(format!("http://{addr}/v1/authority"))
                .send()
                .await
                .expect("answers")
                .status()
        });
        assert_eq!(status.as_u16(), 200);
    }
}

// A database written by a newer Tally is refused with a clear error, by the commands and by
// the service, and left as it was.
#[test]
fn a_database_from_a_newer_tally_is_refused() {
    let Some(server) = pg() else { return };
    let url = server.url("authority");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, _) = init(tmp.path());
    let out = tally(
        bin(),
        &["authority", "keys", "--dir", s(&dir), "--database", &url],
    );
    assert!(out.status.success(), "{out:?}");
    server.psql("authority", "UPDATE tally_schema SET version = 99");
    for args in [
        vec!["authority", "keys", "--dir", s(&dir), "--database", &url],
        vec![
            "authority",
            "run",
            "--dir",
            s(&dir),
            "--database",
            &url,
            "--listen",
            "127.0.0.1:0",
        ],
    ] {
        let out = tally(bin(), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        let want = format!(
            "schema version 99 is newer than this Tally supports ({}); upgrade Tally",
            tally_authority::store::postgres::SCHEMA_VERSION
        );
        assert!(err.contains(&want), "{args:?}: {err}");
    }
    assert_eq!(
        server.psql("authority", "SELECT max(version) FROM tally_schema"),
        "99"
    );
}

// X3: a database that does not answer gives an error within seconds naming the server, never
// a hang; the password is not shown.
#[test]
fn a_down_database_is_reported_quickly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, _) = init(tmp.path());
    let url = format!("postgres://tally:hunter2@127.0.0.1:{port}/authority");
    let started = std::time::Instant::now();
    let out = tally(
        bin(),
        &["authority", "keys", "--dir", s(&dir), "--database", &url],
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("check that the server runs"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}
