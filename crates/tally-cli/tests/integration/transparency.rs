//! X8 with real processes: the authority's transparency log. Hosts keep the inclusion proof
//! of their certificate (online at once, offline with `tally host log-proof`) and show it in
//! status; 1,000 certificates and MAK claims issued through two `tally authority run`
//! processes on one PostgreSQL all verify with `tally log verify` and no database; a row
//! changed, removed-and-renumbered, or deleted in the database makes the check of a kept head
//! fail with a message that says so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::{Value, json};
use tally_core::trust::{generate_key, to_hex};
use tally_test_support::authority::AuthorityDir;
use tally_test_support::postgres::PgServer;
use tally_test_support::{Process, tally, tally_json};

use crate::bin;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `tally log verify ARGS`, as anyone with authority.pub runs it: no database in sight.
fn log_verify(args: &[&str]) -> Output {
    Command::new(bin())
        .args(["log", "verify"])
        .args(args)
        .env_remove("TALLY_DATABASE_URL")
        .env_remove("RUST_LOG")
        .output()
        .expect("run tally")
}

fn init(root: &Path) -> (PathBuf, String) {
    let authority = AuthorityDir::init(bin(), root.join("authority"));
    (authority.dir.clone(), authority.token())
}

fn run(dir: &Path, db: Option<&str>) -> (Process, std::net::SocketAddr) {
    let authority = AuthorityDir::at(bin(), dir);
    match db {
        Some(url) => authority.on_database(url).run(),
        None => authority.run(),
    }
}

// X8: a host activated online keeps a verified proof and status shows it; a host activated
// offline has none and status says how to get one; `tally host log-proof` fetches it; signed
// catalogs and manual certificates are logged too; `tally authority log` lists them all.
#[test]
fn x8_hosts_keep_their_certificate_proof_online_and_offline() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (adir, _) = init(tmp.path());
    let issue = || AuthorityDir::at(bin(), &adir).issue_host_key("server-c").0;
    let (_auth, addr) = run(&adir, None);
    let url = format!("http://{addr}");
    let trust = adir.join("authority.pub");

    // Online.
    let online = tmp.path().join("online");
    let key = issue();
    assert!(
        tally(
            bin(),
            &["host", "install-key", "--data-dir", s(&online), &key]
        )
        .status
        .success()
    );
    let (code, v) = tally_json(
        bin(),
        &[
            "host",
            "activate",
            "--data-dir",
            s(&online),
            "--online",
            &url,
            "--trust",
            s(&trust),
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["log_index"], 0, "{v}");
    let proof = online.join("certificate.proof");
    let cert = online.join("host.cert");
    let out = log_verify(&[
        "--trust",
        s(&trust),
        "--certificate",
        s(&cert),
        "--proof",
        s(&proof),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("verified: host_certificate entry 0"),
        "{}",
        text(&out)
    );
    let (code, st) = tally_json(
        bin(),
        &["host", "status", "--data-dir", s(&online), "--json"],
    );
    assert_eq!(code, Some(0), "{st}");
    assert_eq!(st["transparency_log"]["proven"], true, "{st}");
    assert_eq!(st["transparency_log"]["index"], 0);
    let out = tally(bin(), &["host", "status", "--data-dir", s(&online)]);
    assert!(
        text(&out).contains("Logged:      entry 0 of the authority's transparency log"),
        "{}",
        text(&out)
    );

    // A proof is for one certificate: another host's certificate does not match it.
    let offline = tmp.path().join("offline");
    let key2 = issue();
    assert!(
        tally(
            bin(),
            &["host", "install-key", "--data-dir", s(&offline), &key2]
        )
        .status
        .success()
    );
    let (_, id) = tally_json(
        bin(),
        &[
            "host",
            "activate",
            "--data-dir",
            s(&offline),
            "--offline",
            "--json",
        ],
    );
    let (code, c) = tally_json(
        bin(),
        &[
            "authority",
            "confirm",
            "--dir",
            s(&adir),
            id["installation_id"].as_str().expect("id"),
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{c}");
    let out = tally(
        bin(),
        &[
            "host",
            "activate",
            "--data-dir",
            s(&offline),
            "--confirmation",
            c["confirmation_id"].as_str().expect("confirmation"),
            "--trust",
            s(&trust),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("tally host log-proof --authority URL"),
        "{}",
        text(&out)
    );
    let out = log_verify(&[
        "--trust",
        s(&trust),
        "--certificate",
        s(&offline.join("host.cert")),
        "--proof",
        s(&proof),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("proves another entry than the certificate"),
        "{}",
        text(&out)
    );
    let (_, st) = tally_json(
        bin(),
        &["host", "status", "--data-dir", s(&offline), "--json"],
    );
    assert_eq!(st["transparency_log"]["proven"], false, "{st}");
    assert_eq!(
        st["transparency_log"]["fix"],
        "tally host log-proof --authority URL"
    );
    let out = tally(bin(), &["host", "status", "--data-dir", s(&offline)]);
    assert!(
        text(&out).contains("Logged:      not yet proven"),
        "{}",
        text(&out)
    );
    let (code, v) = tally_json(
        bin(),
        &[
            "host",
            "log-proof",
            "--data-dir",
            s(&offline),
            "--authority",
            &url,
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["index"], 1, "{v}");
    let (_, st) = tally_json(
        bin(),
        &["host", "status", "--data-dir", s(&offline), "--json"],
    );
    assert_eq!(st["transparency_log"]["proven"], true, "{st}");

    // A signed catalog and a manual certificate are logged before they are written out.
    let catalog = tmp.path().join("catalog.toml");
    std::fs::write(&catalog, tally_core::catalog::DEMO_CATALOG).expect("write");
    let signed = tmp.path().join("catalog.signed");
    let out = tally(
        bin(),
        &[
            "authority",
            "sign-catalog",
            "--dir",
            s(&adir),
            s(&catalog),
            "--out",
            s(&signed),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("(log entry 2)"), "{}", text(&out));
    let head = tmp.path().join("head");
    let (code, log) = tally_json(
        bin(),
        &[
            "authority",
            "log",
            "--dir",
            s(&adir),
            "--head-out",
            s(&head),
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{log}");
    let kinds: Vec<&str> = log["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["host_certificate", "host_certificate_offline", "catalog"]
    );
    assert_eq!(log["head"]["size"], 3);
    let object = log["entries"][2]["object"].as_str().expect("object");
    assert_eq!(object, to_hex(&std::fs::read(&signed).expect("signed")));
    // The head kept now verifies against the running authority's.
    let out = log_verify(&["--trust", s(&trust), "--old", s(&head), "--authority", &url]);
    assert!(out.status.success(), "{}", text(&out));
    let out = tally(
        bin(),
        &[
            "authority",
            "log",
            "--dir",
            s(&adir),
            "--from",
            "1",
            "--limit",
            "1",
        ],
    );
    assert!(
        text(&out).contains("host_certificate_offline"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("next page: --from 2"), "{}", text(&out));
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

/// Issues `n` objects over both processes, at most 16 in flight: host keys of 60 activations
/// each (6 hosts × 10) and one MAK for the rest. Returns (certificate, proof) texts of the
/// hosts and the proofs of the claims.
async fn issue_many(
    addrs: [std::net::SocketAddr; 2],
    token: &str,
    hosts: usize,
    claims: usize,
) -> (Vec<(String, String)>, Vec<String>) {
    let mut keys = Vec::new();
    for _ in 0..hosts.div_ceil(60) {
        let (status, k) = post(
            addrs[0],
            "/v1/keys",
            Some(token),
            &json!({ "group": "server-c" }),
        )
        .await;
        assert_eq!(status, 201, "{k}");
        keys.push(k["key"].as_str().expect("key").to_owned());
    }
    let mut mak = String::new();
    if claims > 0 {
        let (status, m) = post(
            addrs[1],
            "/v1/maks",
            Some(token),
            &json!({ "budget": claims }),
        )
        .await;
        assert_eq!(status, 201, "{m}");
        mak = m["key"].as_str().expect("mak").to_owned();
    }
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..hosts + claims {
        let (gate, addr) = (Arc::clone(&gate), addrs[i % 2]);
        let (path, body) = if i < hosts {
            // Host h of key k, its a-th activation: 6 hosts per key, 10 activations each.
            let (k, h) = (i / 60, (i % 60) / 10);
            (
                "/v1/host-activations",
                json!({
                    "host_key": keys[k],
                    "host_public_key": to_hex(generate_key().verifying_key().as_bytes()),
                    "hardware_id": format!("{:010x}", k * 10 + h),
                }),
            )
        } else {
            (
                "/v1/mak-activations",
                json!({
                    "mak": mak,
                    "cmid": uuid::Uuid::new_v4(),
                    "sku": uuid::Uuid::new_v4(),
                    "hardware_id": format!("{i:010x}"),
                }),
            )
        };
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("gate");
            let (status, v) = post(addr, path, None, &body).await;
            assert_eq!(status, 200, "{v}");
            (
                i < hosts,
                v["certificate"].as_str().map(str::to_owned),
                v["log"]["proof"].as_str().expect("proof").to_owned(),
            )
        });
    }
    let (mut certs, mut claim_proofs) = (Vec::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            (true, Some(cert), proof) => certs.push((cert, proof)),
            (false, None, proof) => claim_proofs.push(proof),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    (certs, claim_proofs)
}

// X8 at scale across processes: 600 host certificates and 400 MAK claims through two
// authority processes on one PostgreSQL get 1,000 dense, distinct log indexes; every proof
// verifies with `tally log verify` and no database; rewrites are caught by a kept head.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn x8_thousand_entries_over_two_processes_verify_and_rewrites_are_caught() {
    let Some(server) = PgServer::start() else {
        return;
    };
    server.create_database("authority");
    let url = server.url("authority");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (adir, token) = init(tmp.path());
    let trust = adir.join("authority.pub");
    let (_a, addr_a) = run(&adir, Some(&url));
    let (_b, addr_b) = run(&adir, Some(&url));
    let started = std::time::Instant::now();
    let (certs, claims) = issue_many([addr_a, addr_b], &token, 600, 400).await;
    eprintln!("1000 log entries issued in {:?}", started.elapsed());
    assert_eq!((certs.len(), claims.len()), (600, 400));
    // Reactivations supersede earlier certificates, so revocation lists (kind 7, X7) are
    // logged between the certificates and claims.
    let count = server.psql(
        "authority",
        "SELECT count(*) FILTER (WHERE kind <> 7), min(idx), max(idx) + 1 = count(*), count(DISTINCT idx) = count(*) FROM authority_log_entries",
    );
    assert_eq!(count, "1000|0|t|t", "dense, distinct indexes");
    let n: u64 = server
        .psql("authority", "SELECT count(*) FROM authority_log_entries")
        .parse()
        .expect("count");

    // Every proof, checked by the command anyone runs, in batches of 100 files.
    let files = tmp.path().join("proofs");
    std::fs::create_dir(&files).expect("mkdir");
    let mut cert_args = Vec::new();
    for (i, (cert, proof)) in certs.iter().enumerate() {
        let (c, p) = (
            files.join(format!("{i}.cert")),
            files.join(format!("{i}.proof")),
        );
        std::fs::write(&c, cert).expect("write");
        std::fs::write(&p, proof).expect("write");
        cert_args.push((c, p));
    }
    let started = std::time::Instant::now();
    for batch in cert_args.chunks(100) {
        let mut args = vec![
            "--trust".to_owned(),
            s(&trust).to_owned(),
            "--json".to_owned(),
        ];
        for (c, p) in batch {
            args.extend([
                "--certificate".into(),
                s(c).into(),
                "--proof".into(),
                s(p).into(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = log_verify(&args);
        assert!(out.status.success(), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["inclusion"].as_array().map(Vec::len), Some(batch.len()));
    }
    let mut claim_files = Vec::new();
    for (i, proof) in claims.iter().enumerate() {
        let p = files.join(format!("claim-{i}.proof"));
        std::fs::write(&p, proof).expect("write");
        claim_files.push(p);
    }
    for batch in claim_files.chunks(100) {
        let mut args = vec!["--trust", s(&trust)];
        for p in batch {
            args.extend(["--proof", s(p)]);
        }
        let out = log_verify(&args);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("verified: mak_claim entry"),
            "{}",
            text(&out)
        );
    }
    eprintln!("1000 proofs verified in {:?}", started.elapsed());

    // The vendor keeps the head of size 1000; the log grows by one; the kept head checks out.
    let kept = tmp.path().join("head-1000");
    let (code, log) = tally_json(
        bin(),
        &[
            "authority",
            "log",
            "--dir",
            s(&adir),
            "--database",
            &url,
            "--limit",
            "0",
            "--head-out",
            s(&kept),
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(log["head"]["size"], n);
    issue_many([addr_b, addr_a], &token, 1, 0).await;
    let authority_url = format!("http://{addr_a}");
    let check = || {
        log_verify(&[
            "--trust",
            s(&trust),
            "--old",
            s(&kept),
            "--authority",
            &authority_url,
        ])
    };
    let out = check();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "the log of size {} extends the head of size {n}",
            n + 1
        )),
        "{}",
        text(&out)
    );

    // 1. An entry changed, and its leaf hash recomputed so the authority sees nothing wrong.
    let saved = server.psql(
        "authority",
        "SELECT encode(object, 'hex') || '|' || encode(object_hash, 'hex') || '|' || encode(leaf_hash, 'hex') FROM authority_log_entries WHERE idx = 500",
    );
    server.psql(
        "authority",
        "UPDATE authority_log_entries SET object = overlay(object placing '\\xff'::bytea from 1 for 1) WHERE idx = 500;
         UPDATE authority_log_entries SET object_hash = sha256(object),
           leaf_hash = sha256('\\x0001'::bytea || set_byte('\\x00'::bytea, 0, kind) || int8send(at) || int4send(length(object)) || object)
           WHERE idx = 500",
    );
    let (status, _) = get(addr_b, "/v1/log/entries?from=500&limit=1").await;
    assert_eq!(status, 200, "the changed row is self-consistent");
    let out = check();
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("the log was rewritten: the head of size {} does not extend the head of size {n} you kept", n + 1)),
        "{}",
        text(&out)
    );
    let parts: Vec<&str> = saved.split('|').collect();
    server.psql(
        "authority",
        &format!(
            "UPDATE authority_log_entries SET object = decode('{}', 'hex'), object_hash = decode('{}', 'hex'), leaf_hash = decode('{}', 'hex') WHERE idx = 500",
            parts[0], parts[1], parts[2]
        ),
    );
    assert!(
        check().status.success(),
        "restored, the kept head checks out again"
    );

    // 2. An entry removed and the later ones renumbered (the log looks whole again).
    server.psql(
        "authority",
        "DELETE FROM authority_log_entries WHERE idx = 200;
         UPDATE authority_log_entries SET idx = idx + 1000000 WHERE idx > 200;
         UPDATE authority_log_entries SET idx = idx - 1000001 WHERE idx > 1000000;
         UPDATE authority_log_state SET size = size - 1",
    );
    let out = check();
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("the log was rewritten: the head of size {n} does not extend the head of size {n} you kept")),
        "{}",
        text(&out)
    );

    // 3. A row simply deleted: the authority says its log is damaged rather than sign a head.
    server.psql(
        "authority",
        "DELETE FROM authority_log_entries WHERE idx = 300",
    );
    let out = check();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("log_damaged") && text(&out).contains("entry 300 is missing"),
        "{}",
        text(&out)
    );
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    let resp = crate::http()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("authority answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}
