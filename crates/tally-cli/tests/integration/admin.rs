//! Issue 6 with real processes: the admin API's authentication, settings applied live and kept
//! across restarts (R26), the event log over HTTP (R27), remote administration from the command
//! line, the admin API over TLS, and an online backup. What the host reports to admins
//! (metrics, the dashboard, the compliance report) is tested in `admin_reports`, with the
//! helpers here.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tally_test_support::{HostProcess, in_ci, tally, tally_json};

use crate::bin;

const SERVER_WEB: &str = "FW777-M677J-W8KJV-QG4VJ-HC6WP";

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub(crate) fn token(host: &HostProcess) -> String {
    std::fs::read_to_string(host.data_dir.join("admin.token"))
        .expect("token")
        .trim()
        .to_owned()
}

pub(crate) async fn get(host: &HostProcess, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = crate::http().get(format!("http://{}{path}", host.admin));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("admin reachable");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn patch(host: &HostProcess, body: Value) -> (u16, Value) {
    let resp = crate::http()
        .patch(format!("http://{}/api/v1/settings", host.admin))
        .bearer_auth(token(host))
        .json(&body)
        .send()
        .await
        .expect("admin reachable");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub(crate) fn activate(
    root: &Path,
    name: &str,
    host: &HostProcess,
    addr: &str,
) -> (Option<i32>, Value) {
    let dir = root.join(name);
    assert!(
        tally(
            bin(),
            &[
                "client",
                "--state-dir",
                s(&dir),
                "trust",
                s(&host.data_dir.join("authority.pub"))
            ]
        )
        .status
        .success()
    );
    assert!(
        tally(
            bin(),
            &["client", "--state-dir", s(&dir), "install-key", SERVER_WEB]
        )
        .status
        .success()
    );
    tally_json(
        bin(),
        &[
            "client",
            "--state-dir",
            s(&dir),
            "--json",
            "--machine-name",
            name,
            "activate",
            "--host",
            addr,
        ],
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

// R26: the admin API needs the token (401 and a log line without it; the token is never
// logged); settings apply to the running host without a restart and persist across restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r26_settings_apply_live_and_persist() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    let t = token(&host);
    let (status, v) = get(&host, "/api/v1/status", None).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (401, Some("unauthorized")),
        "{v}"
    );
    let (status, _) = get(&host, "/api/v1/status", Some("wrong")).await;
    assert_eq!(status, 401);
    assert!(host.wait_for_log("admin request refused", Duration::from_secs(5)));
    assert!(
        !host.stderr().contains(&t),
        "the token must never be logged"
    );

    // Intervals (R9) apply to the next response.
    let (status, v) = patch(
        &host,
        json!({ "activation_interval_secs": 90, "renewal_interval_secs": 600 }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (_, a) = activate(tmp.path(), "c1", &host, &host.addr.to_string());
    assert_eq!(a["status"]["renewal_interval_secs"], 600, "{a}");
    assert_eq!(a["status"]["activation_interval_secs"], 90);

    // A port change rebinds without dropping the request in flight.
    let mut in_flight = tokio::net::TcpStream::connect(host.addr)
        .await
        .expect("connect old port");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    in_flight
        .write_all(&[0, 2, tally_proto::PROTOCOL_VERSION])
        .await
        .expect("half a frame");
    let new_port = free_port();
    let (status, v) = patch(&host, json!({ "port": new_port })).await;
    assert_eq!(
        (status, v["port"].as_u64()),
        (200, Some(u64::from(new_port))),
        "{v}"
    );
    in_flight
        .write_all(&[0x03])
        .await
        .expect("rest of the frame");
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), in_flight.read(&mut buf))
        .await
        .expect("answered")
        .expect("read");
    assert!(
        n > 4 && buf[3] == 0x04,
        "the request in flight on the old port was answered"
    );
    let new_addr = format!("127.0.0.1:{new_port}");
    let (code, a) = activate(tmp.path(), "c2", &host, &new_addr);
    assert_eq!((code, a["count"].as_u64()), (Some(2), Some(2)), "{a}");
    assert!(
        tokio::net::TcpStream::connect(host.addr).await.is_err(),
        "the old port is closed"
    );

    // Bad values are refused with a reason; nothing changes.
    let (status, v) = patch(&host, json!({ "renewal_interval_secs": 0 })).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("bad_setting")),
        "{v}"
    );
    let (status, _) = patch(&host, json!({ "nonsense": 1 })).await;
    assert_eq!(status, 400);
    let (status, v) = patch(&host, json!({ "dns_publish": true })).await;
    assert!(
        status == 400 && v["message"].as_str().is_some_and(|m| m.contains("[dns]")),
        "{v}"
    );

    // R26 low/normal priority: the kernel's nice value follows.
    let nice = |pid: u32| -> i64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(16))
            .and_then(|n| n.parse().ok())
            .unwrap_or(-99)
    };
    assert_eq!(patch(&host, json!({ "priority": "low" })).await.0, 200);
    assert_eq!(nice(host.pid()), 10);
    assert_eq!(patch(&host, json!({ "priority": "normal" })).await.0, 200);
    assert_eq!(nice(host.pid()), 0);

    // R27 over HTTP: the setting changes are events.
    let (_, events) = get(&host, "/api/v1/events?id=1002", Some(&t)).await;
    assert!(events.as_array().is_some_and(|e| e.len() >= 4), "{events}");

    // Persisted: after a restart the host listens on the new port with the new intervals.
    host.kill9();
    let data = host.data_dir.clone();
    let host = HostProcess::start_dev(bin(), &data, &[]);
    assert_eq!(host.addr.port(), new_port);
    let (_, st) = get(&host, "/api/v1/status", Some(&token(&host))).await;
    assert_eq!(st["settings"]["renewal_interval_secs"], 600, "{st}");
    assert_eq!(st["pools"][0]["count"], 2);
}

// R26 remote administration from the command line: --target with good and bad credentials,
// the local host through its data directory, and the slmgr host options.
#[test]
fn remote_admin_from_the_command_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    let url = format!("http://{}", host.admin);
    let token_file = host.data_dir.join("admin.token");
    let (code, v) = tally_json(
        bin(),
        &[
            "host",
            "set",
            "--target",
            &url,
            "--token-file",
            s(&token_file),
            "--renewal-interval",
            "3h",
            "--json",
        ],
    );
    assert_eq!(
        (code, v["renewal_interval_secs"].as_u64()),
        (Some(0), Some(10_800)),
        "{v}"
    );
    let out = tally(
        bin(),
        &["host", "status", "--target", &url, "--token", "wrong"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tally(bin(), &["host", "status", "--target", &url]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--token-file"),
        "a remote host needs a token"
    );
    // The host on this machine, found through its data directory.
    let data = s(&host.data_dir);
    let (_, v) = tally_json(
        bin(),
        &[
            "host",
            "set",
            "--data-dir",
            data,
            "--activation-interval",
            "45",
            "--json",
        ],
    );
    assert_eq!(v["activation_interval_secs"], 2700);
    let (_, v) = tally_json(
        bin(),
        &["slmgr", "--data-dir", data, "/sri", "20", "--json"],
    );
    assert_eq!(v["renewal_interval_secs"], 1200, "{v}");
    let (_, v) = tally_json(bin(), &["slmgr", "--data-dir", data, "/dli", "--json"]);
    assert_eq!(v["settings"]["renewal_interval_secs"], 1200, "{v}");
    let (_, ev) = tally_json(
        bin(),
        &[
            "host",
            "events",
            "--target",
            &url,
            "--token-file",
            s(&token_file),
            "--id",
            "1002",
            "--json",
        ],
    );
    assert_eq!(ev.as_array().map(Vec::len), Some(3), "{ev}");
    let (_, st) = tally_json(
        bin(),
        &[
            "host",
            "status",
            "--target",
            &url,
            "--token-file",
            s(&token_file),
            "--json",
        ],
    );
    assert_eq!(st["settings"]["activation_interval_secs"], 2700);

    // Clients and a signed report over the API.
    for n in 0..3 {
        activate(
            tmp.path(),
            &format!("lab-{n}"),
            &host,
            &host.addr.to_string(),
        );
    }
    let remote = ["--target", url.as_str(), "--token-file", s(&token_file)];
    let (_, page) = tally_json(
        bin(),
        &[
            &["host", "clients"][..],
            &remote,
            &["--search", "lab-1", "--json"],
        ]
        .concat(),
    );
    assert_eq!(
        (
            page["total"].as_u64(),
            page["clients"][0]["machine_name"].as_str()
        ),
        (Some(1), Some("lab-1")),
        "{page}"
    );
    let report = tmp.path().join("remote-report.csv");
    let out = tally(
        bin(),
        &[
            &["host", "report"][..],
            &remote,
            &["--format", "csv", "--out", s(&report)],
        ]
        .concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trust = host.data_dir.join("authority.pub");
    let (code, v) = tally_json(
        bin(),
        &[
            "authority",
            "verify-report",
            "--trust",
            s(&trust),
            s(&report),
            "--json",
        ],
    );
    assert_eq!((code, v["total"].as_u64()), (Some(0), Some(3)), "{v}");

    // The listen address (not only the port) changes live.
    let listen = format!("127.0.0.2:{}", free_port());
    let (code, v) = tally_json(
        bin(),
        &[
            &["host", "set"][..],
            &remote,
            &["--listen", &listen, "--json"],
        ]
        .concat(),
    );
    assert_eq!(
        (code, v["listen"].as_str()),
        (Some(0), Some(listen.as_str())),
        "{v}"
    );
    let (code, a) = activate(tmp.path(), "moved", &host, &listen);
    assert_eq!((code, a["count"].as_u64()), (Some(2), Some(4)), "{a}");
}

// Operations: an online backup taken while the host serves restores to the same state.
#[test]
fn online_backup_restores_the_same_state() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    for n in 0..4 {
        activate(tmp.path(), &format!("pc{n}"), &host, &host.addr.to_string());
    }
    let backup = tmp.path().join("tally-backup.db");
    let out = tally(
        bin(),
        &[
            "host",
            "backup",
            "--data-dir",
            s(&host.data_dir),
            "--out",
            s(&backup),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = tmp.path().join("restored");
    std::fs::create_dir_all(&restored).expect("mkdir");
    for f in ["host.key", "host.cert", "authority.pub"] {
        std::fs::copy(host.data_dir.join(f), restored.join(f)).expect("copy identity");
    }
    std::fs::copy(&backup, restored.join("tally.db")).expect("restore");
    let (_, a) = tally_json(
        bin(),
        &["host", "status", "--data-dir", s(&host.data_dir), "--json"],
    );
    let (_, b) = tally_json(
        bin(),
        &["host", "status", "--data-dir", s(&restored), "--json"],
    );
    assert_eq!(a["pools"], b["pools"]);
    assert_eq!(b["registry_clients"], 4);
}

// R26 optional TLS: the admin API over HTTPS with the admin's certificate; the command line
// trusts it with --ca-file (remote) or the copy in the data directory (local); plain HTTP fails.
#[test]
fn admin_api_over_tls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (tmp.path().join("admin.crt"), tmp.path().join("admin.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ])
        .args([
            "-subj",
            "/CN=tally-admin",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    match made {
        Ok(o) if o.status.success() => {}
        other => {
            assert!(
                !in_ci(),
                "openssl is needed to make a test certificate: {other:?}"
            );
            tally_test_support::skip(
                "admin_api_over_tls",
                "openssl could not make a test certificate",
            );
            return;
        }
    }
    let host = HostProcess::start_dev(
        bin(),
        &tmp.path().join("host"),
        &["--admin-tls-cert", s(&cert), "--admin-tls-key", s(&key)],
    );
    let url = format!("https://{}", host.admin);
    let token_file = host.data_dir.join("admin.token");
    let (code, v) = tally_json(
        bin(),
        &[
            "host",
            "status",
            "--target",
            &url,
            "--token-file",
            s(&token_file),
            "--ca-file",
            s(&cert),
            "--json",
        ],
    );
    assert_eq!(
        (code, v["certificate"]["key_group"].as_str()),
        (Some(0), Some("server-c")),
        "{v}"
    );
    // Local commands find the URL and trust the certificate through the data directory.
    let (code, v) = tally_json(
        bin(),
        &[
            "host",
            "set",
            "--data-dir",
            s(&host.data_dir),
            "--renewal-interval",
            "9h",
            "--json",
        ],
    );
    assert_eq!(
        (code, v["renewal_interval_secs"].as_u64()),
        (Some(0), Some(32_400)),
        "{v}"
    );
    // Without trusting the certificate, or over plain HTTP, nothing is served.
    let out = tally(
        bin(),
        &[
            "host",
            "status",
            "--target",
            &url,
            "--token-file",
            s(&token_file),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let plain = format!("http://{}", host.admin);
    let out = tally(
        bin(),
        &[
            "host",
            "status",
            "--target",
            &plain,
            "--token-file",
            s(&token_file),
        ],
    );
    assert!(!out.status.success());
}
