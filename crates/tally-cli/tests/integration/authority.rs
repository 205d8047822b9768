//! Issue 5 with real processes: `tally authority run` over HTTP, hosts activating online and
//! offline (R22), the 6-host limit with an exception and revocation (R23), key safety, and MAK
//! clients activating with the authority (R25). A catalog signed by the authority and imported
//! into a running host (R24) is tested in `authority_catalog`, with the helpers here.

use std::path::{Path, PathBuf};

use tally_test_support::authority::AuthorityDir;
use tally_test_support::{Process, tally, tally_json};

use crate::bin;

const SERVER_DATACENTER: &str = "F7R4D-6HMTK-PVWRM-DXKYV-FFDH6";

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub(crate) fn out_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn authority(root: &Path, group: &str) -> (PathBuf, String, u64) {
    let authority = AuthorityDir::init(bin(), root.join("authority"));
    let (key, serial) = authority.issue_host_key(group);
    (authority.dir, key, serial)
}

/// Runs `tally host activate --online` for a host whose hardware is `hw`.
fn activate_online(host: &Path, url: &str, trust: &Path, hw: &Path) -> std::process::Output {
    std::process::Command::new(bin())
        .args([
            "host",
            "activate",
            "--data-dir",
            s(host),
            "--online",
            url,
            "--trust",
            s(trust),
        ])
        .env("TALLY_HARDWARE_FILE", hw)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tally")
}

// R22, R23 end to end: hosts activate online against a real authority process; the 7th host
// is refused with advice; an exception lets it in; the host serves clients; a revoked key
// cannot reactivate.
#[test]
fn online_activation_limits_exception_and_revocation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (adir, key, serial) = authority(tmp.path(), "server-c");
    let (auth, addr) = Process::spawn_listening(
        bin(),
        &[
            "authority",
            "run",
            "--dir",
            s(&adir),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
        "tally authority listening on ",
    );
    let url = format!("http://{addr}");
    let trust = adir.join("authority.pub");
    let mut hosts = Vec::new();
    for n in 1..=7 {
        let host = tmp.path().join(format!("host{n}"));
        let hw = tmp.path().join(format!("hw{n}.json"));
        std::fs::write(
            &hw,
            format!("{{\"disk\": \"disk-{n}\", \"board\": \"board-{n}\"}}"),
        )
        .expect("hw");
        let out = tally(
            bin(),
            &["host", "install-key", "--data-dir", s(&host), &key],
        );
        assert!(out.status.success(), "{}", out_text(&out));
        // X4: the host key is readable by the host's user only.
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(host.join("host-product.key"))
                .expect("host key file")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "host-product.key mode {mode:o}");
        hosts.push((host, hw));
    }
    for (n, (host, hw)) in hosts.iter().enumerate().take(6) {
        let out = activate_online(host, &url, &trust, hw);
        assert!(out.status.success(), "host {}: {}", n + 1, out_text(&out));
    }
    let (host7, hw7) = &hosts[6];
    let out = activate_online(host7, &url, &trust, hw7);
    assert_eq!(out.status.code(), Some(1));
    let text = out_text(&out);
    assert!(
        text.contains("limit_reached") && text.contains("exception"),
        "{text}"
    );
    // A reactivation of a known host still works (it is not a new host).
    assert!(
        activate_online(&hosts[0].0, &url, &trust, &hosts[0].1)
            .status
            .success()
    );

    let out = tally(
        bin(),
        &[
            "authority",
            "exception",
            "--dir",
            s(&adir),
            "--serial",
            &serial.to_string(),
            "--hosts",
            "1",
            "--reason",
            "DR site",
        ],
    );
    assert!(out.status.success(), "{}", out_text(&out));
    let out = activate_online(host7, &url, &trust, hw7);
    assert!(
        out.status.success(),
        "after the exception: {}",
        out_text(&out)
    );

    // The activated host serves a client whose trust is the authority key.
    let (_h, host_addr) = Process::spawn_listening(
        bin(),
        &[
            "host",
            "run",
            "--data-dir",
            s(&hosts[0].0),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[],
        "tally host listening on ",
    );
    let client = tmp.path().join("client");
    assert!(
        tally(
            bin(),
            &["client", "--state-dir", s(&client), "trust", s(&trust)]
        )
        .status
        .success()
    );
    assert!(
        tally(
            bin(),
            &[
                "client",
                "--state-dir",
                s(&client),
                "install-key",
                SERVER_DATACENTER
            ]
        )
        .status
        .success()
    );
    let (code, v) = tally_json(
        bin(),
        &[
            "client",
            "--state-dir",
            s(&client),
            "--json",
            "activate",
            "--host",
            &host_addr.to_string(),
        ],
    );
    assert_eq!((code, v["count"].as_u64()), (Some(2), Some(1)), "{v}");

    // Revocation: the host cannot re-activate.
    let out = tally(
        bin(),
        &[
            "authority",
            "revoke",
            "--dir",
            s(&adir),
            "--serial",
            &serial.to_string(),
            "--reason",
            "leaked",
        ],
    );
    assert!(out.status.success());
    let out = activate_online(&hosts[1].0, &url, &trust, &hosts[1].1);
    assert_eq!(out.status.code(), Some(1));
    assert!(out_text(&out).contains("key_revoked"), "{}", out_text(&out));
    let (_, keys) = tally_json(
        bin(),
        &[
            "authority",
            "keys",
            "--dir",
            s(&adir),
            "--serial",
            &serial.to_string(),
            "--json",
        ],
    );
    assert_eq!(keys["hosts_used"], 7, "{keys}");
    assert!(keys["revoked_at"].is_number(), "{keys}");
    assert_eq!(keys["activations"][0]["count"], 2);
    drop(auth);
}

// R22 offline: installation ID → (phone) → confirmation ID → activated host; typos are named.
#[test]
fn offline_activation_by_digit_groups() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (adir, key, _) = authority(tmp.path(), "client-vl");
    let host = tmp.path().join("host");
    assert!(
        tally(
            bin(),
            &["host", "install-key", "--data-dir", s(&host), &key]
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
            s(&host),
            "--offline",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{v}");
    let groups: Vec<String> = v["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g.as_str().map(str::to_owned))
        .collect();
    assert_eq!(groups.len(), 21);
    let mut typo = groups.clone();
    let g = &typo[3];
    typo[3] = format!("{}{}", &g[..6], (g.as_bytes()[6] - b'0' + 3) % 10);
    let out = tally(
        bin(),
        &["authority", "confirm", "--dir", s(&adir), &typo.join(" ")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out_text(&out).contains("group 4 is wrong"),
        "{}",
        out_text(&out)
    );
    let (code, c) = tally_json(
        bin(),
        &[
            "authority",
            "confirm",
            "--dir",
            s(&adir),
            &groups.join(" "),
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{c}");
    let confirmation = c["confirmation_id"]
        .as_str()
        .expect("confirmation")
        .to_owned();
    let trust = adir.join("authority.pub");
    let mut bad: Vec<&str> = confirmation.split(' ').collect();
    let swapped = format!("{}{}", &bad[10][1..2], &bad[10][0..1]) + &bad[10][2..];
    if swapped != bad[10] {
        bad[10] = &swapped;
        let out = tally(
            bin(),
            &[
                "host",
                "activate",
                "--data-dir",
                s(&host),
                "--confirmation",
                &bad.join(" "),
                "--trust",
                s(&trust),
            ],
        );
        assert!(
            out_text(&out).contains("group 11 is wrong"),
            "{}",
            out_text(&out)
        );
    }
    let out = tally(
        bin(),
        &[
            "host",
            "activate",
            "--data-dir",
            s(&host),
            "--confirmation",
            &confirmation,
            "--trust",
            s(&trust),
        ],
    );
    assert!(out.status.success(), "{}", out_text(&out));
    let (_, events) = tally_json(
        bin(),
        &[
            "host",
            "events",
            "--data-dir",
            s(&host),
            "--id",
            "1003",
            "--json",
        ],
    );
    assert_eq!(
        events.as_array().map(Vec::len),
        Some(2),
        "install and activation are events: {events}"
    );
    let (_, st) = tally_json(bin(), &["host", "status", "--data-dir", s(&host), "--json"]);
    assert_eq!(st["certificate"]["key_group"], "client-vl", "{st}");
}

// R22 key safety: setup keys and MAKs are refused on hosts, with an explanation.
#[test]
fn hosts_refuse_setup_keys_and_maks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = tmp.path().join("host");
    let out = tally(
        bin(),
        &[
            "host",
            "install-key",
            "--data-dir",
            s(&host),
            SERVER_DATACENTER,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out_text(&out).contains("belongs on clients"),
        "{}",
        out_text(&out)
    );
    let mak = tally_core::ProductKey::mak(7, 9).to_string();
    let out = tally(
        bin(),
        &["host", "install-key", "--data-dir", s(&host), &mak],
    );
    assert!(out_text(&out).contains("MAK"), "{}", out_text(&out));
    // R22: a host key on a client warns and needs --yes.
    let (_, host_key, _) = authority(tmp.path(), "server-a");
    let client = tmp.path().join("client");
    let out = tally(
        bin(),
        &[
            "client",
            "--state-dir",
            s(&client),
            "install-key",
            &host_key,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out_text(&out).contains("--yes"), "{}", out_text(&out));
    let (code, v) = tally_json(
        bin(),
        &[
            "client",
            "--state-dir",
            s(&client),
            "--json",
            "install-key",
            &host_key,
            "--yes",
        ],
    );
    assert_eq!(
        (code, v["status"]["status"].as_str()),
        (Some(0), Some("unlicensed")),
        "{v}"
    );
}

// R25 end to end: MAK clients activate directly with the authority (online and by digit
// groups), within the MAK's budget; the activation is permanent; a setup key turns the client
// back into a host-activated one.
#[test]
fn mak_clients_online_offline_budget_and_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let adir = tmp.path().join("authority");
    assert!(
        tally(bin(), &["authority", "init", "--dir", s(&adir)])
            .status
            .success()
    );
    let (_, v) = tally_json(
        bin(),
        &[
            "authority",
            "issue-mak",
            "--dir",
            s(&adir),
            "--budget",
            "2",
            "--json",
        ],
    );
    let (mak, serial) = (
        v["key"].as_str().expect("mak").to_owned(),
        v["serial"].as_u64().expect("serial"),
    );
    let (_auth, addr) = Process::spawn_listening(
        bin(),
        &[
            "authority",
            "run",
            "--dir",
            s(&adir),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
        "tally authority listening on ",
    );
    let url = format!("http://{addr}");
    let trust = adir.join("authority.pub");
    let client = |n: u32, args: &[&str]| -> (Option<i32>, serde_json::Value) {
        let dir = tmp.path().join(format!("c{n}"));
        let hw = tmp.path().join(format!("hw{n}.json"));
        std::fs::write(&hw, format!("{{\"disk\": \"mak-disk-{n}\"}}")).expect("hw");
        let mut all = vec!["client", "--state-dir", s(&dir), "--json"];
        all.extend_from_slice(args);
        let out = std::process::Command::new(bin())
            .args(&all)
            .env("TALLY_HARDWARE_FILE", &hw)
            .env_remove("RUST_LOG")
            .output()
            .expect("run");
        (
            out.status.code(),
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        )
    };
    for n in 1..=3 {
        assert_eq!(client(n, &["trust", s(&trust)]).0, Some(0));
        assert_eq!(client(n, &["install-key", SERVER_DATACENTER]).0, Some(0));
        let (code, v) = client(n, &["install-key", &mak]);
        assert_eq!(code, Some(0), "{v}");
    }
    for n in 1..=2 {
        let (code, v) = client(n, &["activate", "--authority", &url]);
        assert_eq!(
            (code, v["result"].as_str()),
            (Some(0), Some("activated")),
            "client {n}: {v}"
        );
        let st = &v["status"];
        assert_eq!(
            (
                st["status"].as_str(),
                st["validity_end"].is_null(),
                st["next_attempt"].is_null()
            ),
            (Some("licensed"), true, true),
            "{st}"
        );
    }
    let (code, v) = client(3, &["activate", "--authority", &url]);
    assert_eq!(code, Some(1), "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("limit_reached")),
        "{v}"
    );

    // Offline for the third, after the vendor grants one more machine.
    let (_, id) = client(3, &["activate", "--offline"]);
    let id = id["installation_id"].as_str().expect("id").to_owned();
    let out = tally(bin(), &["authority", "confirm", "--dir", s(&adir), &id]);
    assert_eq!(out.status.code(), Some(1), "{}", out_text(&out));
    let out = tally(
        bin(),
        &[
            "authority",
            "exception",
            "--dir",
            s(&adir),
            "--serial",
            &serial.to_string(),
            "--hosts",
            "1",
            "--reason",
            "lab",
        ],
    );
    assert!(out.status.success());
    let (code, c) = tally_json(
        bin(),
        &["authority", "confirm", "--dir", s(&adir), &id, "--json"],
    );
    assert_eq!(code, Some(0), "{c}");
    let (code, v) = client(
        3,
        &[
            "activate",
            "--confirmation",
            c["confirmation_id"].as_str().expect("conf"),
        ],
    );
    assert_eq!(
        (code, v["status"]["status"].as_str()),
        (Some(0), Some("licensed")),
        "{v}"
    );

    // A setup key makes client 1 host-activated again, back in grace.
    let (_, v) = client(1, &["install-key", SERVER_DATACENTER]);
    assert_eq!(v["status"]["status"], "initial_grace", "{v}");
}
