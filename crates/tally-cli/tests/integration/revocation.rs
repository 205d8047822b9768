//! X7 with real processes: the vendor takes trust back. A real authority (HTTP), hosts
//! activated online on one PostgreSQL fleet, clients that learn the revocation list through
//! another host, through a file beside the catalog, and by import; air-gapped and copied hosts;
//! reactivations that supersede.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tally_test_support::postgres::PgServer;
use tally_test_support::{Process, tally, tally_json, wait_until};

use crate::bin;

const SERVER_DATACENTER: &str = "F7R4D-6HMTK-PVWRM-DXKYV-FFDH6";
const HOST_REVOKED: &str = "0xC7A1000A";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn ok(args: &[&str]) -> String {
    let out = tally(bin(), args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "tally {args:?}: {text}");
    text
}

/// A real authority: its directory and its running HTTP API.
struct Authority {
    dir: PathBuf,
    url: String,
    _process: Process,
}

impl Authority {
    fn start(root: &Path) -> Self {
        let dir = root.join("authority");
        ok(&["authority", "init", "--dir", s(&dir)]);
        let (process, addr) = Process::spawn_listening(
            bin(),
            &[
                "authority",
                "run",
                "--dir",
                s(&dir),
                "--listen",
                "127.0.0.1:0",
            ],
            &[],
            "tally authority listening on ",
        );
        Self {
            dir,
            url: format!("http://{addr}"),
            _process: process,
        }
    }

    fn trust(&self) -> PathBuf {
        self.dir.join("authority.pub")
    }

    /// A new server-c host key: (key, serial).
    fn issue(&self) -> (String, String) {
        let (code, v) = tally_json(
            bin(),
            &[
                "authority",
                "issue-host-key",
                "--dir",
                s(&self.dir),
                "--group",
                "server-c",
                "--json",
            ],
        );
        assert_eq!(code, Some(0), "{v}");
        (
            v["key"].as_str().expect("key").to_owned(),
            v["serial"].to_string(),
        )
    }

    /// Installs `key` in `host` and activates it online claiming hardware `hw`; the output.
    fn activate(&self, host: &Path, key: &str, hw: &str) -> std::process::Output {
        ok(&["host", "install-key", "--data-dir", s(host), key]);
        let hw_file = host.with_extension("hw.json");
        std::fs::write(
            &hw_file,
            format!("{{\"disk\": \"{hw}\", \"board\": \"{hw}\"}}"),
        )
        .expect("hw");
        std::process::Command::new(bin())
            .args([
                "host",
                "activate",
                "--data-dir",
                s(host),
                "--online",
                &self.url,
                "--trust",
                s(&self.trust()),
            ])
            .env("TALLY_HARDWARE_FILE", &hw_file)
            .env_remove("RUST_LOG")
            .output()
            .expect("run tally")
    }

    fn revocations(&self, out: &Path) -> serde_json::Value {
        let (code, v) = tally_json(
            bin(),
            &[
                "authority",
                "revocations",
                "--dir",
                s(&self.dir),
                "--out",
                s(out),
                "--json",
            ],
        );
        assert_eq!(code, Some(0), "{v}");
        v
    }
}

fn run_host(dir: &Path, extra: &[&str]) -> (Process, String) {
    let mut args = vec![
        "host",
        "run",
        "--data-dir",
        s(dir),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let (p, addr) = Process::spawn_listening(bin(), &args, &[], "tally host listening on ");
    (p, addr.to_string())
}

fn host_status(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["host", "status", "--data-dir", s(dir), "--json"];
    args.extend_from_slice(extra);
    let (code, v) = tally_json(bin(), &args);
    assert_eq!(code, Some(0), "{v}");
    v
}

/// A client trusting `trust` with the datacenter setup key installed.
fn client(root: &Path, name: &str, trust: &Path) -> PathBuf {
    let dir = root.join(name);
    ok(&["client", "--state-dir", s(&dir), "trust", s(trust)]);
    ok(&[
        "client",
        "--state-dir",
        s(&dir),
        "install-key",
        SERVER_DATACENTER,
    ]);
    dir
}

/// The demo catalog with the datacenter edition activating at a count of 1, in `DIR/update/`
/// (where a vendor's update would put it, and the revocation list beside it).
fn write_catalog(root: &Path, sub: &str) -> PathBuf {
    let dir = root.join(sub);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("catalog.toml");
    let text = tally_core::catalog::DEMO_CATALOG.replace(
        &format!("setup_key = \"{SERVER_DATACENTER}\""),
        &format!("setup_key = \"{SERVER_DATACENTER}\"\nthreshold = 1"),
    );
    assert_ne!(text, tally_core::catalog::DEMO_CATALOG);
    std::fs::write(&path, text).expect("catalog");
    path
}

fn activate(client: &Path, host: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["client", "--state-dir", s(client), "--json", "--no-agent"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["activate", "--host", host]);
    tally_json(bin(), &args).1
}

fn status(client: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["client", "--state-dir", s(client), "--json", "--no-agent"];
    args.extend_from_slice(extra);
    args.push("status");
    tally_json(bin(), &args).1
}

// X7, R19: a fleet of two hosts; the vendor revokes host 1's key. The list reaches clients
// through host 2 (which fetches it from the authority) and, separately, through a file beside
// the catalog in an update; both refuse host 1 with host_revoked and the reason, and activate
// through host 2. The air-gapped host 1 imports the list and stops serving (status, events),
// while still relaying the list; a copy of its data directory from before the import, run
// elsewhere, is refused by every client with the list; a client offered an older list keeps
// the newer one.
#[test]
fn x7_a_revoked_host_is_refused_through_every_channel() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    pg.create_database("fleet");
    let url = pg.url("fleet");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let authority = Authority::start(root);
    let (key1, serial1) = authority.issue();
    let (key2, _) = authority.issue();
    let host1 = root.join("host1");
    let host2 = root.join("host2");
    assert!(authority.activate(&host1, &key1, "one").status.success());
    assert!(authority.activate(&host2, &key2, "two").status.success());
    // A copy of host 1's data directory (a backup, a VM image), taken while it was trusted.
    let copy = root.join("host1-copy");
    let cp = std::process::Command::new("cp")
        .args(["-a", s(&host1), s(&copy)])
        .status()
        .expect("cp");
    assert!(cp.success());

    let catalog = write_catalog(root, "update");
    let plain_catalog = write_catalog(root, "plain");
    let plain = ["--catalog", s(&plain_catalog)];
    let with_update = ["--catalog", s(&catalog)];
    let fleet = ["--database", url.as_str(), "--catalog", s(&catalog)];
    let (_h1, addr1) = run_host(&host1, &[&fleet[..], &["--host-name", "one"]].concat());

    // Two clients activate through host 1 before anything is revoked.
    let a = client(root, "client-a", &authority.trust());
    let b = client(root, "client-b", &authority.trust());
    assert_eq!(activate(&a, &addr1, &with_update)["count"], 1);
    assert_eq!(activate(&b, &addr1, &with_update)["count"], 2);
    assert_eq!(status(&b, &with_update)["licensed"], true);

    // The vendor revokes host 1's key.
    let list1 = root.join("list-1.tally");
    ok(&[
        "authority",
        "revoke",
        "--dir",
        s(&authority.dir),
        "--serial",
        &serial1,
        "--reason",
        "data directory leaked",
        "--code",
        "key_compromise",
    ]);
    let published = authority.revocations(&list1);
    assert_eq!(published["serial"], 1, "{published}");
    assert_eq!(published["entries"][0]["reason"], "key_compromise");

    // Host 2 fetches the list from the authority on its schedule (the first fetch at start).
    let config = root.join("host2.toml");
    std::fs::write(
        &config,
        format!(
            "revocations_url = \"{}\"\nrevocations_refresh_minutes = 1\n",
            authority.url
        ),
    )
    .expect("config");
    let (_h2, addr2) = run_host(
        &host2,
        &[&fleet[..], &["--host-name", "two", "--config", s(&config)]].concat(),
    );
    let held = wait_until(Duration::from_secs(20), || {
        let v = host_status(&host2, &["--database", &url]);
        (v["revocation"]["serial"] == 1).then_some(v)
    })
    .expect("host 2 holds list 1");
    assert!(held["revocation"]["revoked"].is_null(), "{held}");

    // Channel 1, any other host: client A asks host 2, learns list 1 from it, then refuses
    // host 1's answers with host_revoked and the reason.
    let v = activate(&a, &addr2, &with_update);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["count"], 2, "the fleet counts A once: {v}");
    assert_eq!(v["status"]["revocation_serial"], 1, "{v}");
    let v = activate(&a, &addr1, &with_update);
    assert_eq!(v["code"], HOST_REVOKED, "{v}");
    assert_eq!(v["result"], "host_revoked", "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("key compromise") && msg.contains("revocation list"),
        "{msg}"
    );

    // Channel 2, an update: client B (activated by host 1, never told) gets the list beside
    // its catalog; its activation by a revoked host counts for nothing any more, so it is due
    // to activate again, and does, through host 2.
    std::fs::copy(&list1, root.join("update").join("revocations.tally")).expect("copy list");
    let st = status(&b, &with_update);
    assert_eq!(st["licensed"], false, "{st}");
    assert_eq!(st["revocation_serial"], 1, "{st}");
    assert!(
        st["revoked"]
            .as_str()
            .unwrap_or_default()
            .contains("host that activated"),
        "{st}"
    );
    let v = activate(&b, &addr1, &with_update);
    assert_eq!(v["result"], "host_revoked", "{v}");
    let v = activate(&b, &addr2, &with_update);
    assert_eq!(
        (v["ok"].clone(), v["count"].clone()),
        (true.into(), 2.into()),
        "{v}"
    );
    assert!(status(&b, &with_update)["revoked"].is_null());

    // Air-gapped: host 1 imports the file and stops answering activations; it says why in its
    // status, and still relays the list that revokes it (a client new to it learns it there).
    let out = ok(&[
        "host",
        "import-revocations",
        "--data-dir",
        s(&host1),
        s(&list1),
    ]);
    assert!(out.contains("revokes this host"), "{out}");
    let st = wait_until(Duration::from_secs(20), || {
        let v = host_status(&host1, &["--database", &url]);
        v["revocation"]["revoked"].is_object().then_some(v)
    })
    .expect("host 1 knows");
    assert_eq!(
        st["revocation"]["revoked"]["reason"], "key_compromise",
        "{st}"
    );
    let c = client(root, "client-c", &authority.trust());
    let refused = wait_until(Duration::from_secs(20), || {
        let v = activate(&c, &addr1, &plain);
        (v["result"] == "host_revoked").then_some(v)
    })
    .expect("host 1 answers host_revoked");
    assert_eq!(refused["code"], HOST_REVOKED, "{refused}");
    // C's catalog has no list beside it: host 1 itself relayed the list that revokes it.
    assert_eq!(
        status(&c, &plain)["revocation_serial"],
        1,
        "relayed by the revoked host"
    );
    let events = tally(
        bin(),
        &[
            "host",
            "events",
            "--data-dir",
            s(&host1),
            "--database",
            &url,
            "--json",
        ],
    );
    assert!(
        String::from_utf8_lossy(&events.stdout).contains("1021"),
        "event 1021 logged"
    );

    // The copied data directory, run elsewhere (its own database, no list): it answers, and
    // every client that has the list refuses it.
    let (_copy, addr_copy) = run_host(&copy, &with_update);
    for cl in [&a, &b, &c] {
        let v = activate(cl, &addr_copy, &with_update);
        assert_eq!(v["result"], "host_revoked", "{v}");
    }

    // No rollback: a newer list (serial 2) is kept; the older file is refused afterwards.
    ok(&[
        "authority",
        "revoke",
        "--dir",
        s(&authority.dir),
        "--certificate",
        &"ab".repeat(32),
        "--reason",
        "test",
        "--code",
        "withdrawn",
    ]);
    let list2 = root.join("list-2.tally");
    assert_eq!(authority.revocations(&list2)["serial"], 2);
    ok(&[
        "client",
        "--state-dir",
        s(&a),
        "import-revocations",
        s(&list2),
    ]);
    let out = tally(
        bin(),
        &[
            "client",
            "--state-dir",
            s(&a),
            "import-revocations",
            s(&list1),
        ],
    );
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("older"), "{text}");
    // An old list beside the catalog is ignored too.
    assert_eq!(status(&a, &with_update)["revocation_serial"], 2);
    // And a host relaying the older list does not take the newer one away.
    assert_eq!(
        activate(&a, &addr2, &with_update)["status"]["revocation_serial"],
        2
    );
}

// X7, R23: one host key activated from 10 data directories claiming 7 hardware ids (the 7th
// refused by R23; three reactivations claim hardware id 1 again with new host keys). Each
// reactivation supersedes the certificate it replaces: a client with the current list accepts
// exactly 6 live hosts and refuses the superseded ones.
#[test]
fn x7_reactivations_supersede_so_at_most_six_hosts_live() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let authority = Authority::start(root);
    let (key, _) = authority.issue();
    let claims = [
        "hw1", "hw2", "hw3", "hw4", "hw5", "hw6", "hw7", "hw1", "hw1", "hw1",
    ];
    let mut activated = Vec::new();
    for (n, hw) in claims.iter().enumerate() {
        let dir = root.join(format!("host{n}"));
        let out = authority.activate(&dir, &key, hw);
        if *hw == "hw7" {
            assert!(!out.status.success(), "R23: a 7th machine is refused");
        } else {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            activated.push(dir);
        }
    }
    assert_eq!(activated.len(), 9);
    let list = root.join("list.tally");
    let v = authority.revocations(&list);
    let superseded: Vec<_> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["reason"] == "superseded")
        .collect();
    assert_eq!(superseded.len(), 3, "{v}");

    let cl = client(root, "client", &authority.trust());
    ok(&[
        "client",
        "--state-dir",
        s(&cl),
        "import-revocations",
        s(&list),
    ]);
    let mut live = 0;
    let mut refused = Vec::new();
    for (n, dir) in activated.iter().enumerate() {
        let (_h, addr) = run_host(dir, &[]);
        let v = activate(&cl, &addr, &[]);
        match v["result"].as_str() {
            Some("host_revoked") => {
                assert!(
                    v["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("superseded"),
                    "{v}"
                );
                refused.push(n);
            }
            _ => {
                assert_eq!(v["count"], 1, "host {n}: {v}");
                live += 1;
            }
        }
    }
    assert_eq!(live, 6, "R23: at most 6 live hosts per key");
    // The first three certificates claiming hw1 (directories 0, 7 and 8) are superseded;
    // the latest (directory 9) is live.
    assert_eq!(
        refused,
        vec![0, 6, 7],
        "indexes into the 9 activated directories"
    );
}

// X7, R25: a revoked MAK activates no new machine, and a MAK client that gets the list (here
// by import, as an update would bring it) is no longer licensed and says why; a MAK client
// without the list is unaffected until it gets one.
#[test]
fn x7_a_revoked_mak_ends_its_activations_for_clients_with_the_list() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let authority = Authority::start(root);
    let (_, v) = tally_json(
        bin(),
        &[
            "authority",
            "issue-mak",
            "--dir",
            s(&authority.dir),
            "--budget",
            "5",
            "--json",
        ],
    );
    let (mak, serial) = (
        v["key"].as_str().expect("mak").to_owned(),
        v["serial"].to_string(),
    );
    let mak_client = |n: u32| {
        let dir = client(root, &format!("mak{n}"), &authority.trust());
        let hw = root.join(format!("mak{n}.hw.json"));
        std::fs::write(&hw, format!("{{\"disk\": \"mak-disk-{n}\"}}")).expect("hw");
        ok(&["client", "--state-dir", s(&dir), "install-key", &mak]);
        let out = std::process::Command::new(bin())
            .args([
                "client",
                "--state-dir",
                s(&dir),
                "--json",
                "activate",
                "--authority",
            ])
            .arg(&authority.url)
            .env("TALLY_HARDWARE_FILE", &hw)
            .env_remove("RUST_LOG")
            .output()
            .expect("run");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (dir, hw, v)
    };
    let (one, hw1, v) = mak_client(1);
    assert_eq!(v["result"], "activated", "{v}");
    let (two, _, v) = mak_client(2);
    assert_eq!(v["result"], "activated", "{v}");

    ok(&[
        "authority",
        "revoke",
        "--dir",
        s(&authority.dir),
        "--serial",
        &serial,
        "--reason",
        "refund",
        "--code",
        "withdrawn",
    ]);
    let list = root.join("list.tally");
    assert_eq!(authority.revocations(&list)["entries"][0]["kind"], "mak");

    // A new machine cannot activate with it.
    let (_, _, v) = mak_client(3);
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("key_revoked"),
        "{v}"
    );

    // Client 1 gets the list: its MAK activation ends, and it says why.
    ok(&[
        "client",
        "--state-dir",
        s(&one),
        "import-revocations",
        s(&list),
    ]);
    let st = std::process::Command::new(bin())
        .args(["client", "--state-dir", s(&one), "--json", "status"])
        .env("TALLY_HARDWARE_FILE", &hw1)
        .output()
        .expect("run");
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).expect("json");
    assert_eq!(
        (st["licensed"].clone(), st["permanent"].clone()),
        (false.into(), false.into()),
        "{st}"
    );
    let why = st["revoked"].as_str().unwrap_or_default();
    assert!(
        why.contains("MAK serial") && why.contains("withdrawn"),
        "{st}"
    );
    // Client 2 has not seen the list (it learns it from an update or a host).
    assert_eq!(status(&two, &[])["revocation_serial"], 0);
}

// X7: OPERATIONS.md's runbook for a leaked host key runs as written, and leaves what it
// promises: the key on the list (key_compromise), the list file written, the air-gapped host
// holding it and saying it is revoked.
#[test]
fn x7_operations_runbook_runs_as_written() {
    let ops = crate::readme::doc("docs/OPERATIONS.md");
    let lines = crate::rollover::runbook_lines(&ops, "X7 runbook");
    assert!(
        lines.len() >= 9,
        "the runbook has its blocks: {}",
        lines.len()
    );
    let mut runner = crate::readme::Runner::new(&[]);
    for line in &lines {
        runner.run(line, "docs/OPERATIONS.md");
    }
    let list = std::fs::read_to_string(runner.path("revocations.tally")).expect("list file");
    assert!(list.starts_with("tally-revocation-list-v1 "), "{list}");
    let (code, v) = tally_json(
        bin(),
        &[
            "host",
            "import-revocations",
            "--data-dir",
            s(&runner.path("host-x")),
            s(&runner.path("revocations.tally")),
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        (v["serial"].clone(), v["replaced"].clone()),
        (1.into(), false.into()),
        "{v}"
    );
    assert!(
        v["revokes_this_host"]
            .as_str()
            .unwrap_or_default()
            .contains("key compromise"),
        "{v}"
    );
}
