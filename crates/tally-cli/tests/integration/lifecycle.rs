//! Issue 3 with real processes: the agent renews on the host's interval and survives the host
//! going down (R7–R9), R13 checks over the agent socket, clones and generalize (R11), the
//! slmgr aliases and the manual host (R14, R20).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tally_test_support::{HostProcess, Process, in_ci, tally, tally_json, wait_until};

use crate::bin;

const SERVER_WEB: &str = "FW777-M677J-W8KJV-QG4VJ-HC6WP";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A client state dir that trusts `host` and has the Server Web setup key.
fn client_dir(root: &Path, name: &str, host: &HostProcess) -> std::path::PathBuf {
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
    let out = tally(
        bin(),
        &["client", "--state-dir", s(&dir), "install-key", SERVER_WEB],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn activate(dir: &Path, host: &str) -> (Option<i32>, Value) {
    tally_json(
        bin(),
        &[
            "client",
            "--state-dir",
            s(dir),
            "--json",
            "activate",
            "--host",
            host,
        ],
    )
}

fn status(dir: &Path) -> Value {
    tally_json(
        bin(),
        &["client", "--state-dir", s(dir), "--json", "status"],
    )
    .1
}

/// A dev host renewing every 2 s (retry 1 s) with four servers counted, and the state dir of
/// a fifth, which activates (R1).
fn fast_host_and_fifth_client(root: &Path) -> (HostProcess, String, std::path::PathBuf) {
    let host = HostProcess::start_dev(
        bin(),
        &root.join("host"),
        &["--renewal-interval", "2s", "--activation-interval", "1s"],
    );
    let addr = host.addr.to_string();
    for i in 0..4 {
        let dir = client_dir(root, &format!("other{i}"), &host);
        assert_eq!(activate(&dir, &addr).0, Some(2));
    }
    let dir = client_dir(root, "agent", &host);
    (host, addr, dir)
}

// Issue 22.8, R2, R8: a machine that asked while the count was below the threshold is not
// activated until it asks again, one activation interval later (2 h here); an agent that starts
// on it asks at once, so it activates at boot once the threshold has been reached meanwhile.
#[test]
fn an_agent_starting_on_an_unlicensed_machine_asks_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    let addr = host.addr.to_string();
    let early = client_dir(tmp.path(), "early", &host);
    assert_eq!(activate(&early, &addr).0, Some(2), "count 1 of 5");
    for i in 0..4 {
        let dir = client_dir(tmp.path(), &format!("later{i}"), &host);
        activate(&dir, &addr);
    }
    let st = status(&early);
    assert_ne!(st["status"], "licensed", "{st}");
    let agent = Process::spawn(
        bin(),
        &["agent", "run", "--state-dir", s(&early), "--host", &addr],
        &[],
    );
    wait_until(Duration::from_secs(20), || {
        (status(&early)["status"] == "licensed").then_some(())
    })
    .unwrap_or_else(|| panic!("the agent did not ask at start; log:\n{}", agent.stderr()));
}

// R7, R8, R9 for real: the agent renews on the interval the host sets (seconds), survives the
// host being down (retries on the activation interval, logs it) and picks up when it is back.
#[test]
fn agent_renews_on_host_interval_and_survives_host_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut host, addr, dir) = fast_host_and_fifth_client(tmp.path());
    let host_dir = host.data_dir.clone();
    let mut agent = Process::spawn(
        bin(),
        &[
            "agent",
            "run",
            "--state-dir",
            s(&dir),
            "--host",
            &addr,
            "--machine-name",
            "agent-pc",
        ],
        &[],
    );
    let first = wait_until(Duration::from_secs(20), || {
        let st = status(&dir);
        (st["status"] == "licensed")
            .then(|| st["validity_end"].as_i64())
            .flatten()
    })
    .unwrap_or_else(|| panic!("agent never activated; log:\n{}", agent.stderr()));
    let st = status(&dir);
    assert_eq!(
        st["renewal_interval_secs"], 2,
        "R9: the host's interval is in force"
    );
    // R8: a renewal two seconds later restarts the 180 days (R7).
    let renewed = wait_until(Duration::from_secs(20), || {
        status(&dir)["validity_end"].as_i64().filter(|v| *v > first)
    });
    assert!(
        renewed.is_some(),
        "no renewal; agent log:\n{}\nhost log:\n{}",
        agent.stderr(),
        host.stderr()
    );

    // The host goes away: the agent retries on the activation interval and logs it.
    host.kill9();
    let failed = wait_until(Duration::from_secs(20), || {
        let st = status(&dir);
        (st["last_attempt"]["result"] == "host_unreachable").then_some(st)
    })
    .unwrap_or_else(|| panic!("no failed attempt seen; log:\n{}", agent.stderr()));
    assert_eq!(
        failed["status"], "licensed",
        "a failed renewal keeps the license (R7)"
    );
    // The state is written before the attempt is logged: wait for the line, not a race.
    assert!(
        agent.wait_for_log("will retry", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );

    // The host is back on the same address: the agent picks up.
    let before = status(&dir)["validity_end"].as_i64().unwrap_or_default();
    let _host = HostProcess::start_on(
        bin(),
        &host_dir,
        &addr,
        &["--renewal-interval", "2s", "--activation-interval", "1s"],
    );
    let back = wait_until(Duration::from_secs(20), || {
        let st = status(&dir);
        (st["last_attempt"]["result"] == "activated" && st["validity_end"].as_i64() > Some(before))
            .then_some(())
    });
    assert!(
        back.is_some(),
        "agent did not recover; log:\n{}",
        agent.stderr()
    );
    assert!(agent.is_running());
    let stopped = agent
        .terminate(Duration::from_secs(10))
        .expect("agent stops on SIGTERM");
    assert!(stopped.success());
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// R8: a renewal whose answer comes later than the renewal interval (a host stalled by load) is
// followed by the next one an activation interval later: the agent does not sleep for an hour.
#[test]
fn agent_renews_again_when_an_answer_outlasts_the_interval() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (host, addr, dir) = fast_host_and_fifth_client(tmp.path());
    let mut agent = Process::spawn(
        bin(),
        &["agent", "run", "--state-dir", s(&dir), "--host", &addr],
        &[],
    );
    let activated = || agent.stderr().matches("result=activated").count();
    wait_until(Duration::from_secs(20), || (activated() > 0).then_some(()))
        .unwrap_or_else(|| panic!("agent never activated; log:\n{}", agent.stderr()));

    // The host stops answering; the kernel still accepts the agent's next connection and
    // buffers its request. The agent still answers on its socket. A pause that lands while a
    // renewal is in flight (next attempt already due) is undone and tried again.
    let (paused, done) = (0..5)
        .find_map(|_| {
            host.pause();
            let st = status(&dir);
            let done = activated();
            if st["next_attempt"].as_i64().is_some_and(|t| t > now_ms()) {
                return Some((st, done));
            }
            host.resume();
            wait_until(Duration::from_secs(20), || {
                (activated() > done).then_some(())
            });
            None
        })
        .expect("a pause between two renewals");
    let due = paused["next_attempt"].as_i64().expect("next_attempt");
    // Stopped well past the renewal interval (2 s) from the attempt's start, well inside the
    // client's 10 s timeout.
    let stalled = wait_until(Duration::from_secs(20), || {
        (now_ms() > due + 4_000).then(|| status(&dir))
    })
    .expect("clock moves");
    host.resume();
    assert_eq!(
        stalled["validity_end"], paused["validity_end"],
        "no renewal while the host is stopped"
    );
    // The stalled renewal is answered more than an interval late: the next one is due already
    // and goes one activation interval (1 s) later, not after an hour's sleep.
    let renewed = wait_until(Duration::from_secs(20), || {
        (activated() >= done + 2).then_some(())
    });
    assert!(
        renewed.is_some(),
        "no renewal after the late answer; log:\n{}",
        agent.stderr()
    );
    assert!(
        agent
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}

// R13: any local user may activate through the agent; rearm needs root or the agent's owner.
#[test]
fn r13_any_user_activates_only_root_rearms() {
    let setpriv = Path::new("/usr/bin/setpriv");
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !setpriv.exists() || !root {
        assert!(
            !in_ci(),
            "CI must run this test as root with setpriv (util-linux) installed"
        );
        tally_test_support::skip(
            "r13_any_user_activates_only_root_rearms",
            "needs root and setpriv to act as an unprivileged user",
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    let dir = client_dir(tmp.path(), "c", &host);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let agent = Process::spawn(
        bin(),
        &[
            "agent",
            "run",
            "--state-dir",
            s(&dir),
            "--host",
            &host.addr.to_string(),
        ],
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(10), || dir
            .join("agent.sock")
            .exists()
            .then_some(()))
        .is_some(),
        "{}",
        agent.stderr()
    );
    let as_nobody = |args: &[&str]| -> (Option<i32>, Value) {
        let out = std::process::Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin())
            .args(args)
            .output()
            .expect("run setpriv");
        let v = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), v)
    };
    let (code, v) = as_nobody(&["client", "--state-dir", s(&dir), "--json", "activate"]);
    assert_eq!(
        (code, v["result"].as_str()),
        (Some(2), Some("below_threshold")),
        "{v}"
    );
    let (code, v) = as_nobody(&["client", "--state-dir", s(&dir), "--json", "rearm"]);
    assert_eq!(
        (code, v["code"].as_str()),
        (Some(1), Some("0xC7A10203")),
        "{v}"
    );
    assert_eq!(v["result"], "access_denied");
    // X4: an activation that chooses where the key goes (a host, an authority for a MAK) is
    // privileged, so a local user cannot make the agent send the key to a server of theirs.
    for redirect in [
        ["--host", "127.0.0.1:9"],
        ["--authority", "http://127.0.0.1:9"],
    ] {
        let mut args = vec!["client", "--state-dir", s(&dir), "--json", "activate"];
        args.extend_from_slice(&redirect);
        let (code, v) = as_nobody(&args);
        assert_eq!(
            (code, v["result"].as_str()),
            (Some(1), Some("access_denied")),
            "{redirect:?}: {v}"
        );
    }
    // The state (it holds the key) is readable by its owner only.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("state.json"))
            .expect("state")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "state.json mode {mode:o}");
    let (code, v) = tally_json(
        bin(),
        &["client", "--state-dir", s(&dir), "--json", "rearm"],
    );
    assert_eq!(code, Some(0), "root may rearm: {v}");
    assert_eq!(v["status"]["rearms_left"], 2);
}

// R11: clones that were not generalized share a CMID and count once; after generalize, twice.
#[test]
fn r11_clones_count_once_until_generalized() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // R11 as the spec states it: a host set to count clones once (X6's default counts them
    // apart: client_clock::x6_a_copy_on_identical_hardware_is_reported_and_counted_apart).
    let config = tmp.path().join("host.toml");
    std::fs::write(&config, "clones = \"once\"\n").expect("config");
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &["--config", s(&config)]);
    let addr = host.addr.to_string();
    let a = client_dir(tmp.path(), "a", &host);
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&b).expect("mkdir");
    for f in ["state.json", "authority.pub"] {
        std::fs::copy(a.join(f), b.join(f)).expect("clone the installation");
    }
    assert_eq!(activate(&a, &addr).1["count"], 1);
    assert_eq!(activate(&b, &addr).1["count"], 1, "a clone counts once");
    let (code, v) = tally_json(
        bin(),
        &["client", "--state-dir", s(&b), "--json", "generalize"],
    );
    assert_eq!(code, Some(0), "{v}");
    assert_ne!(status(&a)["cmid"], status(&b)["cmid"]);
    assert_eq!(
        activate(&b, &addr).1["count"],
        2,
        "after generalize it counts on its own"
    );
}

// R11 + R14 + R20 through the slmgr aliases.
#[test]
fn slmgr_aliases_drive_the_client() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    let dir = tmp.path().join("c");
    let d = s(&dir);
    let trust = host.data_dir.join("authority.pub");
    assert!(
        tally(bin(), &["client", "--state-dir", d, "trust", s(&trust)])
            .status
            .success()
    );
    let slmgr = |args: &[&str]| -> (Option<i32>, Value) {
        let mut all = vec!["slmgr", "--state-dir", d, "--json"];
        all.extend_from_slice(args);
        tally_json(bin(), &all)
    };
    assert_eq!(slmgr(&["/ipk", SERVER_WEB]).0, Some(0));
    assert_eq!(slmgr(&["/skms", &host.addr.to_string()]).0, Some(0));
    let (code, v) = slmgr(&["/ato"]);
    assert_eq!(
        (code, v["result"].as_str()),
        (Some(2), Some("below_threshold")),
        "{v}"
    );
    assert_eq!(v["code"], "0x47A10001");
    let st = slmgr(&["/dli"]).1;
    assert_eq!(st["manual_host"], host.addr.to_string());
    assert_eq!(st["status"], "initial_grace");
    // R20: clearing the manual host turns discovery back on.
    assert_eq!(slmgr(&["/ckms"]).1["status"]["manual_host"], Value::Null);
    // R11: three rearms, then a clear error with its code.
    for left in [2, 1, 0] {
        assert_eq!(slmgr(&["/rearm"]).1["status"]["rearms_left"], left);
    }
    let (code, v) = slmgr(&["/rearm"]);
    assert_eq!(
        (code, v["result"].as_str(), v["code"].as_str()),
        (Some(1), Some("no_rearm_left"), Some("0xC7A10201"))
    );
    // Generalize with no rearm left: new CMID, timer unchanged, exit non-zero.
    let before = slmgr(&["/dli"]).1;
    let (code, v) = tally_json(bin(), &["client", "--state-dir", d, "--json", "generalize"]);
    assert_eq!(code, Some(1), "{v}");
    assert_ne!(v["status"]["cmid"], before["cmid"]);
    assert_eq!(v["status"]["grace_end"], before["grace_end"]);
    assert_eq!(slmgr(&["/upk"]).1["status"]["status"], "unlicensed");
}

// The embeddable API answers through the agent when it runs and from the file when it does not.
#[tokio::test]
async fn library_api_reads_status_through_agent_and_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    let dir = client_dir(tmp.path(), "lib", &host);
    let licensing = tally_client::Licensing::new(&dir);
    assert!(!licensing.agent_running().await);
    let offline = licensing.status().await.expect("status from the file");
    assert_eq!(offline.status, tally_client::LicenseStatus::InitialGrace);
    assert_eq!(offline.days_left, 29);
    let agent = Process::spawn(
        bin(),
        &[
            "agent",
            "run",
            "--state-dir",
            s(&dir),
            "--host",
            &host.addr.to_string(),
        ],
        &[],
    );
    let running = wait_until(Duration::from_secs(10), || {
        dir.join("agent.sock").exists().then_some(())
    });
    assert!(running.is_some(), "{}", agent.stderr());
    assert!(licensing.agent_running().await);
    let r = licensing.activate().await.expect("activate via agent");
    assert_eq!(
        (r.result.as_str(), r.count),
        ("below_threshold", Some(1)),
        "{r:?}"
    );
    let via_agent = licensing.status().await.expect("status via agent");
    assert_eq!(via_agent.cmid, offline.cmid);
    assert_eq!(
        via_agent.last_attempt.map(|a| a.result),
        Some("below_threshold".to_owned())
    );
}
