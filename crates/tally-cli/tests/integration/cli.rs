//! The user-facing flows: demo, catalog, host + client processes (R2, R3, R14, R16).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tally_test_support::{HostProcess, tally, tally_json};

use crate::bin;

const WORKSTATION_PRO: &str = "FCK62-BC4QC-96T2H-XD989-PVGG9";
const SERVER_WEB: &str = "FW777-M677J-W8KJV-QG4VJ-HC6WP";
const SERVER_DATACENTER: &str = "F7R4D-6HMTK-PVWRM-DXKYV-FFDH6";

/// Installs `key` in a fresh client state dir and activates once; returns (exit, JSON).
fn client_activate(root: &Path, name: &str, key: &str, host: &HostProcess) -> (Option<i32>, Value) {
    let state = root.join(name);
    let state = state.to_str().expect("utf-8 temp path");
    let out = tally(bin(), &["client", "--state-dir", state, "install-key", key]);
    assert!(
        out.status.success(),
        "install-key failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trust = host.data_dir.join("authority.pub");
    tally_json(
        bin(),
        &[
            "client",
            "--state-dir",
            state,
            "--trust",
            trust.to_str().expect("utf-8"),
            "--json",
            "activate",
            "--host",
            &host.addr.to_string(),
            "--machine-name",
            name,
        ],
    )
}

// R27 and the on-call admin's log: by default a host writes no line per request (the durable
// event log has each one) but a summary of what it answered, here the one flushed at shutdown.
#[test]
fn a_default_host_logs_a_summary_not_a_line_per_request() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    for i in 0..3 {
        let (code, v) = client_activate(tmp.path(), &format!("quiet{i}"), WORKSTATION_PRO, &host);
        assert_eq!(code, Some(2), "below the threshold: {v}");
    }
    assert!(host.terminate(Duration::from_secs(10)).is_some());
    assert!(
        host.wait_for_log("activation requests answered", Duration::from_secs(5)),
        "{}",
        host.stderr()
    );
    let log = host.stderr();
    assert!(
        log.contains("requests=3") && log.contains("below_threshold=3"),
        "{log}"
    );
    assert!(
        !log.contains("machine=quiet"),
        "no per-request line by default: {log}"
    );
}

// R2, R3 across real processes: three client installs count 1, 2, 3 (not activated), a server
// gets 4 (not activated, needs 5), the next server gets 5 (activated), clients from 25.
#[test]
fn r3_count_sequence_with_real_host_and_client_processes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The per-request log lines are opt-in (debug level on their own target).
    let host = HostProcess::start_dev(
        bin(),
        &tmp.path().join("host"),
        &["--log", "info,tally::requests=debug"],
    );
    let mut seen = Vec::new();
    for (i, key) in [
        WORKSTATION_PRO,
        WORKSTATION_PRO,
        WORKSTATION_PRO,
        SERVER_WEB,
        SERVER_DATACENTER,
    ]
    .into_iter()
    .enumerate()
    {
        let (code, v) = client_activate(tmp.path(), &format!("pc{i}"), key, &host);
        seen.push((
            v["count"].as_u64(),
            v["result"].as_str().map(str::to_owned),
            code,
        ));
    }
    let below = Some("below_threshold".to_owned());
    let activated = Some("activated".to_owned());
    assert_eq!(
        seen,
        vec![
            (Some(1), below.clone(), Some(2)),
            (Some(2), below.clone(), Some(2)),
            (Some(3), below.clone(), Some(2)),
            (Some(4), below.clone(), Some(2)),
            (Some(5), activated.clone(), Some(0)),
        ]
    );
    // Clients activate from 25.
    for i in 5..24 {
        let (code, v) = client_activate(tmp.path(), &format!("pc{i}"), WORKSTATION_PRO, &host);
        assert_eq!((code, v["count"].as_u64()), (Some(2), Some(i + 1)), "{v}");
    }
    let (code, v) = client_activate(tmp.path(), "pc24", WORKSTATION_PRO, &host);
    assert_eq!(
        (code, v["count"].as_u64(), v["result"].as_str()),
        (Some(0), Some(25), Some("activated")),
        "{v}"
    );
    assert_eq!(v["code"], "0x00000000");

    // R4: the first client renews; the count does not rise, and now it is activated.
    let state = tmp.path().join("pc0");
    let trust = host.data_dir.join("authority.pub");
    let (code, v) = tally_json(
        bin(),
        &[
            "client",
            "--state-dir",
            state.to_str().expect("utf-8"),
            "--trust",
            trust.to_str().expect("utf-8"),
            "--json",
            "activate",
            "--host",
            &host.addr.to_string(),
        ],
    );
    assert_eq!((code, v["count"].as_u64()), (Some(0), Some(25)), "{v}");
    let (_, status) = tally_json(
        bin(),
        &[
            "client",
            "--state-dir",
            state.to_str().expect("utf-8"),
            "--json",
            "status",
        ],
    );
    assert_eq!(status["status"], "licensed");
    assert!(status["validity_end"].as_i64().is_some());

    // R27: the host logged event 12290 with the machine name.
    assert!(
        host.wait_for_log("machine=pc24", Duration::from_secs(5)),
        "{}",
        host.stderr()
    );
    assert!(host.stderr().contains("event_id=12290"));

    // R6: the registry has every client; status shows the pool count.
    let (_, clients) = tally_json(
        bin(),
        &[
            "host",
            "clients",
            "--data-dir",
            host.data_dir.to_str().expect("utf-8"),
            "--json",
        ],
    );
    assert_eq!(clients["total"], 25);
    let (_, st) = tally_json(
        bin(),
        &[
            "host",
            "status",
            "--data-dir",
            host.data_dir.to_str().expect("utf-8"),
            "--json",
        ],
    );
    assert_eq!(st["pools"][0]["count"], 25);
    assert_eq!(st["pools"][0]["capacity"], 50);
    assert_eq!(st["certificate"]["key_group"], "server-c");

    // R27: the durable event log has one 12290 per request (26) with the machine names, and the
    // host's own start event.
    let data_dir = host.data_dir.to_str().expect("utf-8");
    let (_, events) = tally_json(
        bin(),
        &[
            "host",
            "events",
            "--data-dir",
            data_dir,
            "--id",
            "12290",
            "--limit",
            "1000",
            "--json",
        ],
    );
    let events = events.as_array().expect("events");
    assert_eq!(events.len(), 26);
    assert!(
        events
            .iter()
            .any(|e| e["data"]["machine"] == "pc24" && e["data"]["activated"] == true)
    );
    assert!(events.iter().all(|e| {
        e["data"]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    }));
    let (_, started) = tally_json(
        bin(),
        &[
            "host",
            "events",
            "--data-dir",
            data_dir,
            "--id",
            "1000",
            "--since",
            "1h",
            "--json",
        ],
    );
    assert_eq!(started.as_array().map(Vec::len), Some(1));
}

#[test]
fn demo_shows_servers_at_5_and_clients_at_25() {
    let (code, rows) = tally_json(bin(), &["demo", "--json"]);
    assert_eq!(code, Some(0));
    let rows = rows.as_array().expect("array");
    assert!(rows.len() >= 30);
    for r in rows {
        let count = r["count"].as_u64().expect("count");
        let threshold = r["threshold"].as_u64().expect("threshold");
        assert_eq!(r["activated"].as_bool(), Some(count >= threshold), "{r}");
    }
    let counts: Vec<u64> = rows
        .iter()
        .take(30)
        .filter_map(|r| r["count"].as_u64())
        .collect();
    assert_eq!(counts, (1..=30).collect::<Vec<_>>());
    assert!(
        rows.iter()
            .any(|r| r["count"] == 5 && r["kind"] == "server" && r["activated"] == true)
    );
    assert!(
        rows.iter()
            .any(|r| r["count"] == 25 && r["kind"] == "client" && r["activated"] == true)
    );
}

#[test]
fn catalog_list_json_has_every_group() {
    let (code, v) = tally_json(bin(), &["catalog", "list", "--json"]);
    assert_eq!(code, Some(0));
    let groups: std::collections::BTreeSet<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["group"].as_str())
        .collect();
    assert_eq!(groups.len(), 4, "{v}");
}

#[test]
fn client_errors_say_what_to_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().to_str().expect("utf-8");
    let out = tally(
        bin(),
        &[
            "client",
            "--state-dir",
            state,
            "activate",
            "--host",
            "127.0.0.1:1",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("install-key"));
    let out = tally(
        bin(),
        &[
            "client",
            "--state-dir",
            state,
            "install-key",
            "BCDFG-HJKMP-QRTVW-XY234-6789B",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("typo"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An unreachable host is a clear failure with a code, exit 1.
    tally(
        bin(),
        &["client", "--state-dir", state, "install-key", SERVER_WEB],
    );
    let trust = tmp.path().join("authority.pub");
    std::fs::write(&trust, "tally-authority-public-key-v1 d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\n")
        .expect("write");
    let (code, v) = tally_json(
        bin(),
        &[
            "client",
            "--state-dir",
            state,
            "--trust",
            trust.to_str().expect("utf-8"),
            "--json",
            "activate",
            "--host",
            "127.0.0.1:1",
            "--timeout",
            "2",
        ],
    );
    assert_eq!(code, Some(1));
    assert_eq!(v["result"], "host_unreachable");
}

// R16, R21 with a real non-dev host: authority, host key for client-vl, host init, certify,
// install-cert, run; a server edition is refused with a signed edition_not_covered.
#[test]
fn r21_real_host_with_client_group_key_refuses_server_editions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = |s: &str| tmp.path().join(s).to_str().expect("utf-8").to_owned();
    assert!(
        tally(bin(), &["authority", "init", "--dir", &p("auth")])
            .status
            .success()
    );
    let (_, key) = tally_json(
        bin(),
        &[
            "authority",
            "issue-host-key",
            "--dir",
            &p("auth"),
            "--group",
            "client-vl",
            "--json",
        ],
    );
    let key = key["key"].as_str().expect("key").to_owned();
    assert!(
        tally(bin(), &["host", "init", "--data-dir", &p("host")])
            .status
            .success()
    );
    let out = tally(
        bin(),
        &[
            "authority",
            "certify",
            "--dir",
            &p("auth"),
            "--host-key",
            &key,
            "--host-pub",
            &p("host/host.pub"),
            "--out",
            &p("host.cert"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tally(
        bin(),
        &[
            "host",
            "install-cert",
            "--data-dir",
            &p("host"),
            &p("host.cert"),
            "--trust",
            &p("auth/authority.pub"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // --dev does nothing when a certificate is installed; the host keeps its client-vl group.
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    let (code, v) = client_activate(tmp.path(), "srv", SERVER_WEB, &host);
    assert_eq!(
        (code, v["result"].as_str()),
        (Some(1), Some("edition_not_covered")),
        "{v}"
    );
    let (code, v) = client_activate(tmp.path(), "ws", WORKSTATION_PRO, &host);
    assert_eq!((code, v["count"].as_u64()), (Some(2), Some(1)), "{v}");
}
