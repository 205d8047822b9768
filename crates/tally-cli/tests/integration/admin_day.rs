//! Issue 15 with real processes: output scripts can trust (flags anywhere on the slmgr line,
//! UTC twins of JSON times, result labels, URLs refused as hosts, a closed stdout, paths in
//! errors) and imaging done right (generalize holds the agent back until its next start, rearm
//! on a licensed machine asks for --force, a failed start changes nothing).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tally_test_support::{HostProcess, Process, tally, tally_json};

use crate::bin;

const SERVER_WEB: &str = "FW777-M677J-W8KJV-QG4VJ-HC6WP";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn client(root: &Path, name: &str, host: &HostProcess) -> std::path::PathBuf {
    let dir = root.join(name);
    let trust = host.data_dir.join("authority.pub");
    assert!(
        tally(
            bin(),
            &["client", "--state-dir", s(&dir), "trust", s(&trust)]
        )
        .status
        .success()
    );
    let (code, v) = tally_json(
        bin(),
        &[
            "client",
            "--state-dir",
            s(&dir),
            "install-key",
            SERVER_WEB,
            "--json",
        ],
    );
    // Installing a key is not an activation: its result says so.
    assert_eq!(
        (code, v["result"].as_str()),
        (Some(0), Some("success")),
        "{v}"
    );
    dir
}

fn activate(dir: &Path, host: &HostProcess, name: &str) -> (Option<i32>, Value) {
    tally_json(
        bin(),
        &[
            "client",
            "--state-dir",
            s(dir),
            "--machine-name",
            name,
            "--json",
            "activate",
            "--host",
            &host.addr.to_string(),
        ],
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn output_scripts_can_trust() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    let dir = client(tmp.path(), "pc1", &host);
    let d = s(&dir);
    assert_eq!(activate(&dir, &host, "pc1").0, Some(2));

    // --json after the slmgr option, and the dash form of the option.
    for args in [
        ["slmgr", "--state-dir", d, "/dli", "--json"],
        ["slmgr", "--state-dir", d, "-dli", "--json"],
    ] {
        let (code, v) = tally_json(bin(), &args);
        assert_eq!(
            (code, v["status"].as_str()),
            (Some(0), Some("initial_grace")),
            "{args:?}: {v}"
        );
        // Every ms time has its UTC twin.
        let grace = v["grace_end_rfc3339"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(grace.ends_with('Z') && grace.contains('T'), "{v}");
    }
    // The host-side slmgr prints text unless --json.
    let data = s(&host.data_dir);
    let out = tally(bin(), &["slmgr", "--data-dir", data, "/dli"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("Certificate:")
            && !text.trim_start().starts_with('{'),
        "{text}"
    );
    let (_, st) = tally_json(bin(), &["host", "status", "--data-dir", data, "--json"]);
    assert!(
        st["certificate"]["not_after_rfc3339"].as_str().is_some(),
        "{st}"
    );
    assert_eq!(st["pools"][0]["server_needed"], 4, "{st}");

    // Local and remote `clients` print the same columns and JSON fields.
    let url = format!("http://{}", host.admin);
    let token = host.data_dir.join("admin.token");
    let local = tally(bin(), &["host", "clients", "--data-dir", data]);
    let remote = tally(
        bin(),
        &[
            "host",
            "clients",
            "--target",
            &url,
            "--token-file",
            s(&token),
        ],
    );
    let header = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(header(&local), header(&remote));
    assert!(
        header(&local).contains("EDITION") && header(&local).contains("LAST SEEN (UTC)"),
        "{}",
        header(&local)
    );
    let (_, l) = tally_json(bin(), &["host", "clients", "--data-dir", data, "--json"]);
    let (_, r) = tally_json(
        bin(),
        &[
            "host",
            "clients",
            "--target",
            &url,
            "--token-file",
            s(&token),
            "--json",
        ],
    );
    let keys = |v: &Value| {
        let mut k: Vec<String> = v["clients"][0]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        k.sort();
        k
    };
    assert_eq!(keys(&l), keys(&r));
    assert!(keys(&l).contains(&"last_seen_rfc3339".to_owned()), "{l}");
    assert_eq!(l["clients"][0]["edition"], "Acme Server Web 2026");

    // A URL where a host is expected is refused with the fix.
    let out = tally(
        bin(),
        &[
            "client",
            "--state-dir",
            d,
            "activate",
            "--host",
            "http://127.0.0.1:1688",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(
        stderr(&out).contains("not a http:// URL") && stderr(&out).contains("`127.0.0.1:1688`"),
        "{}",
        stderr(&out)
    );
    let out = tally(
        bin(),
        &["slmgr", "--state-dir", d, "/skms", "https://kms.example"],
    );
    assert!(
        !out.status.success() && stderr(&out).contains("HOST[:PORT]"),
        "{}",
        stderr(&out)
    );

    // A closed stdout ends quietly.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("'{}' catalog list | head -c 1 >/dev/null; '{}' host clients --data-dir '{data}' --json | head -c 1 >/dev/null", bin().display(), bin().display()))
        .output()
        .expect("bash");
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));

    // An I/O error names its path and says what to do.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    let inside = file.join("state");
    let out = tally(
        bin(),
        &[
            "client",
            "--state-dir",
            s(&inside),
            "trust",
            s(&host.data_dir.join("authority.pub")),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(s(&inside)), "{}", stderr(&out));
}

#[test]
fn imaging_holds_the_agent_until_its_next_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    for n in 0..4 {
        let dir = client(tmp.path(), &format!("other{n}"), &host);
        activate(&dir, &host, &format!("other{n}"));
    }
    let dir = client(tmp.path(), "image", &host);
    let d = s(&dir);
    let addr = host.addr.to_string();
    let agent = Process::spawn(
        bin(),
        &[
            "agent",
            "run",
            "--state-dir",
            d,
            "--host",
            &addr,
            "--machine-name",
            "image",
        ],
        &[],
    );
    assert!(
        agent.wait_for_log("activation attempt", Duration::from_secs(20)),
        "{}",
        agent.stderr()
    );
    let st = tally_json(bin(), &["client", "--state-dir", d, "--json", "status"]).1;
    assert_eq!(st["licensed"], true, "the fifth server activates: {st}");

    // Rearm on a licensed installation asks for --force; nothing is spent.
    let out = tally(bin(), &["client", "--state-dir", d, "rearm"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(
        tally_json(bin(), &["client", "--state-dir", d, "--json", "status"]).1["rearms_left"],
        3
    );

    // A second agent on the same state fails and saves nothing (not its --host either).
    let out = tally(
        bin(),
        &["agent", "run", "--state-dir", d, "--host", "127.0.0.1:9"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already runs"), "{}", stderr(&out));
    assert_eq!(
        tally_json(bin(), &["client", "--state-dir", d, "--json", "status"]).1["manual_host"],
        addr.as_str()
    );

    // Generalize through the running agent: new CMID, and this agent does not activate it.
    let out = tally(bin(), &["client", "--state-dir", d, "generalize"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("next agent start"));
    let new_cmid =
        tally_json(bin(), &["client", "--state-dir", d, "--json", "status"]).1["cmid"].clone();
    let (code, v) = tally_json(bin(), &["client", "--state-dir", d, "--json", "activate"]);
    assert_eq!(code, Some(1), "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("next agent start")),
        "{v}"
    );
    let registered = |cmid: &Value| {
        let (_, page) = tally_json(
            bin(),
            &["host", "clients", "--data-dir", s(&host.data_dir), "--json"],
        );
        page["clients"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| &c["cmid"] == cmid)
    };
    assert!(
        !registered(&new_cmid),
        "the image's new CMID is not counted"
    );
    drop(agent);

    // The deployed copy's first agent start activates with the new CMID.
    let agent = Process::spawn(
        bin(),
        &[
            "agent",
            "run",
            "--state-dir",
            d,
            "--machine-name",
            "deployed",
        ],
        &[],
    );
    assert!(
        agent.wait_for_log("generalized installation started", Duration::from_secs(20)),
        "{}",
        agent.stderr()
    );
    assert!(
        agent.wait_for_log("activation attempt", Duration::from_secs(20)),
        "{}",
        agent.stderr()
    );
    assert!(registered(&new_cmid), "{}", agent.stderr());
}
