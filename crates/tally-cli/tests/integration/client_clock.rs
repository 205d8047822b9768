//! X5 and X6 on the client, with real processes and real clock changes: the `tally client`
//! binary runs under libfaketime (its wall clock moved, the host's left at the real time),
//! and a state directory is copied the way a disk image is.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tally_test_support::faketime;
use tally_test_support::{HostProcess, tally_env, tally_json_env};

use crate::bin;

const SERVER_WEB: &str = "FW777-M677J-W8KJV-QG4VJ-HC6WP";
const DAY_MS: i64 = 86_400_000;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(d.as_millis()).expect("fits")
}

/// A machine: a state directory and a hardware file (`TALLY_HARDWARE_FILE`), run at a clock
/// offset (`None`: the real time).
struct Machine {
    dir: PathBuf,
    hardware: PathBuf,
}

impl Machine {
    fn new(root: &Path, name: &str, disk: &str) -> Self {
        let hardware = root.join(format!("{name}-hw.json"));
        write_hardware(&hardware, disk);
        Self {
            dir: root.join(name),
            hardware,
        }
    }

    /// Runs `tally client --state-dir DIR --json ARGS` at `offset`; `None` when libfaketime is
    /// missing (skipped, or failed under CI).
    fn run(&self, offset: Option<&str>, args: &[&str]) -> Option<(Option<i32>, Value)> {
        let mut env = match offset {
            Some(o) => faketime::env(o)?,
            None => Vec::new(),
        };
        env.push((
            "TALLY_HARDWARE_FILE".into(),
            self.hardware.to_string_lossy().into_owned(),
        ));
        let mut full = vec!["client", "--state-dir", s(&self.dir), "--json"];
        full.extend_from_slice(args);
        Some(tally_json_env(bin(), &full, &faketime::pairs(&env)))
    }

    fn status(&self, offset: Option<&str>) -> Option<Value> {
        self.run(offset, &["status"]).map(|(_, v)| v)
    }

    fn activate(&self, offset: Option<&str>, host: &HostProcess) -> Option<Value> {
        let addr = host.addr.to_string();
        self.run(offset, &["activate", "--host", &addr])
            .map(|(_, v)| v)
    }

    /// Trusts `host`'s authority and installs the Server Web setup key at `offset`.
    fn install(&self, offset: Option<&str>, host: &HostProcess) -> Option<()> {
        let trust = host.data_dir.join("authority.pub");
        let out = tally_env(
            bin(),
            &["client", "--state-dir", s(&self.dir), "trust", s(&trust)],
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (code, v) = self.run(offset, &["install-key", SERVER_WEB])?;
        assert_eq!(code, Some(0), "{v}");
        Some(())
    }
}

fn write_hardware(path: &Path, disk: &str) {
    let hw = serde_json::json!({
        "disk": disk, "board": "board-1", "nic": "nic-1", "cpu": "cpu-1", "memory": "16",
    });
    std::fs::write(path, hw.to_string()).expect("write hardware file");
}

fn ms(v: &Value, field: &str) -> i64 {
    v["status"][field]
        .as_i64()
        .or_else(|| v[field].as_i64())
        .unwrap_or_else(|| panic!("no {field} in {v}"))
}

/// A dev host with four Server Web machines counted, so the fifth activates (R1).
fn host_with_four(root: &Path) -> Option<HostProcess> {
    let host = HostProcess::start_dev(bin(), &root.join("host"), &[]);
    for i in 0..4 {
        let m = Machine::new(root, &format!("other{i}"), &format!("other-disk-{i}"));
        m.install(None, &host)?;
        m.activate(None, &host)?;
    }
    Some(host)
}

// X5 + R10: installed with the clock ten years ahead, then set back: the client says its
// clock is behind and is out of grace until a host answers; the host's answer gives grace
// from the host's real time (30 days), not from 2036.
#[test]
fn x5_install_ten_years_ahead_then_back_gets_grace_from_the_host() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    let m = Machine::new(tmp.path(), "pc", "disk-1");
    if m.install(Some("+3650d"), &host).is_none() {
        return;
    }
    let ahead = m.status(Some("+3650d")).expect("faketime");
    assert_eq!(ahead["status"], "initial_grace", "{ahead}");
    let back = m.status(None).expect("status");
    assert_eq!(
        back["status"], "notification",
        "clock behind: out of grace: {back}"
    );
    let behind = back["clock_behind_secs"]
        .as_i64()
        .expect("clock_behind_secs");
    assert!(behind > 3649 * 86_400, "behind by about ten years: {back}");
    // The agent would try now; so does a manual activation, at the real time.
    let before = now_ms();
    let answer = m.activate(None, &host).expect("activate");
    assert_eq!(answer["result"], "below_threshold", "{answer}");
    let after = m.status(None).expect("status");
    assert_eq!(after["status"], "initial_grace", "{after}");
    assert!(after["clock_behind_secs"].is_null(), "{after}");
    let grace_end = ms(&after, "grace_end");
    assert!(
        grace_end >= before + 29 * DAY_MS && grace_end <= now_ms() + 30 * DAY_MS,
        "grace ends 30 days after the host's answer, not in 2036: {after}"
    );
}

// X5 + R7: an activated client with its clock set back 100 days and no host is not "licensed
// for 280 days"; with a host it renews and validity runs from the host's time.
#[test]
fn x5_clock_set_back_100_days_extends_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(host) = host_with_four(tmp.path()) else {
        return;
    };
    let m = Machine::new(tmp.path(), "pc", "disk-1");
    m.install(None, &host).expect("install");
    let v = m.activate(None, &host).expect("activate");
    assert_eq!(v["ok"], true, "{v}");
    let Some(back) = m.status(Some("-100d")) else {
        return;
    };
    assert_eq!(back["status"], "notification", "{back}");
    assert!(back["days_left"].as_u64() == Some(0), "{back}");
    assert!(
        back["clock_behind_secs"]
            .as_i64()
            .is_some_and(|b| b > 99 * 86_400)
    );
    let renewed = m.activate(Some("-100d"), &host).expect("faketime");
    assert_eq!(renewed["ok"], true, "{renewed}");
    let later = m.status(Some("-100d")).expect("faketime");
    assert_eq!(later["status"], "licensed", "{later}");
    let validity = ms(&later, "validity_end");
    assert!(
        (validity - (now_ms() + 180 * DAY_MS)).abs() < DAY_MS,
        "validity from the host's time, not the clock's: {later}"
    );
    assert!(
        later["days_left"].as_u64().is_some_and(|d| d <= 180),
        "{later}"
    );
}

// X5 + R7: clock 200 days ahead: with no host the validity ran out by the client's clock (the
// vendor's side of the doubt); a host reached renews and the client stays licensed.
#[test]
fn x5_clock_set_forward_200_days_renews_only_through_a_host() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(host) = host_with_four(tmp.path()) else {
        return;
    };
    let m = Machine::new(tmp.path(), "pc", "disk-1");
    m.install(None, &host).expect("install");
    assert_eq!(m.activate(None, &host).expect("activate")["ok"], true);
    let Some(ahead) = m.status(Some("+200d")) else {
        return;
    };
    assert_eq!(ahead["status"], "notification", "validity ran out: {ahead}");
    let renewed = m.activate(Some("+200d"), &host).expect("faketime");
    assert_eq!(renewed["ok"], true, "{renewed}");
    let later = m.status(Some("+200d")).expect("faketime");
    assert_eq!(later["status"], "licensed", "{later}");
    assert!(
        (ms(&later, "validity_end") - (now_ms() + 180 * DAY_MS)).abs() < DAY_MS,
        "validity from the host's time: {later}"
    );
}

/// Sets every future time in `dir`'s state.json to 2040 (as a user with an editor would).
fn push_times_to_2040(dir: &Path) {
    let path = dir.join("state.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).expect("state")).expect("json");
    let t2040 = 2_209_075_200_000_i64;
    for field in ["grace_end", "validity_end", "next_attempt"] {
        if !v["license"][field].is_null() {
            v["license"][field] = t2040.into();
        }
    }
    v["license"]["status"] = "licensed".into();
    std::fs::write(&path, serde_json::to_vec_pretty(&v).expect("json")).expect("write");
}

// X5: editing state.json cannot extend validity or grace beyond what a host signed (was:
// "licensed for 4776 days").
#[test]
fn x5_an_edited_state_extends_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(host) = host_with_four(tmp.path()) else {
        return;
    };
    let licensed = Machine::new(tmp.path(), "licensed", "disk-1");
    licensed.install(None, &host).expect("install");
    assert_eq!(
        licensed.activate(None, &host).expect("activate")["ok"],
        true
    );
    push_times_to_2040(&licensed.dir);
    let v = licensed.status(None).expect("status");
    assert_eq!(v["status"], "licensed", "{v}");
    assert!(v["days_left"].as_u64().is_some_and(|d| d <= 180), "{v}");
    assert!(ms(&v, "validity_end") <= now_ms() + 180 * DAY_MS, "{v}");

    // In grace, after a host answered (a key of an edition with a threshold not reached: a
    // second host with nobody else counted).
    let lone = HostProcess::start_dev(bin(), &tmp.path().join("lone-host"), &[]);
    let grace = Machine::new(tmp.path(), "grace", "disk-2");
    grace.install(None, &lone).expect("install");
    assert_eq!(
        grace.activate(None, &lone).expect("activate")["result"],
        "below_threshold"
    );
    push_times_to_2040(&grace.dir);
    let v = grace.status(None).expect("status");
    assert_ne!(
        v["status"], "licensed",
        "nothing signed says it activated: {v}"
    );
    let g = v["grace_end"].as_i64().expect("grace_end");
    assert!(
        g <= now_ms() + 30 * DAY_MS,
        "grace bounded by the host's answer: {v}"
    );
}

// X6: a state directory copied to other hardware takes a new CMID and counts apart; before it
// reaches a host it does not claim the license activated elsewhere.
#[test]
fn x6_a_state_copied_to_other_hardware_is_a_new_installation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    let original = Machine::new(tmp.path(), "original", "disk-1");
    original.install(None, &host).expect("install");
    let first = original.activate(None, &host).expect("activate");
    assert_eq!(first["count"], 1, "{first}");
    let cmid = original.status(None).expect("status")["cmid"].clone();

    let copy = Machine {
        dir: tmp.path().join("copy"),
        hardware: tmp.path().join("copy-hw.json"),
    };
    write_hardware(&copy.hardware, "disk-other");
    copy_dir(&original.dir, &copy.dir);
    let seen = copy.status(None).expect("status");
    assert_eq!(seen["copied"], true, "{seen}");
    assert_ne!(seen["status"], "licensed", "{seen}");
    let answer = copy.activate(None, &host).expect("activate");
    assert_eq!(answer["count"], 2, "the copy counts apart: {answer}");
    let after = copy.status(None).expect("status");
    assert_ne!(after["cmid"], cmid, "{after}");
    assert_eq!(
        after["cmid_change"]["reason"], "hardware_changed",
        "{after}"
    );
    assert_eq!(after["cmid_change"]["previous"], cmid, "{after}");
    // The original keeps its CMID and is still counted once.
    let again = original.activate(None, &host).expect("activate");
    assert_eq!(again["count"], 2, "{again}");
    assert_eq!(original.status(None).expect("status")["cmid"], cmid);
}

/// Copies a state directory as a disk image would (files only).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

// X6: a VM-style copy on identical hardware (same CMID, same hardware): the host sees one
// installation's number again, reports a clone (event 1009, `clones` in `host clients`) and,
// by default, has the copy take a new CMID, so both are counted.
#[test]
fn x6_a_copy_on_identical_hardware_is_reported_and_counted_apart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    let original = Machine::new(tmp.path(), "original", "disk-1");
    original.install(None, &host).expect("install");
    assert_eq!(
        original.activate(None, &host).expect("activate")["count"],
        1
    );
    let cmid = original.status(None).expect("status")["cmid"].clone();
    let copy = Machine {
        dir: tmp.path().join("copy"),
        hardware: original.hardware.clone(),
    };
    copy_dir(&original.dir, &copy.dir);
    // The copy goes first after the copy was taken: to the host it is the installation.
    let v = copy.activate(None, &host).expect("activate");
    assert_eq!(v["count"], 1, "{v}");
    // The original continues from the same saved number: the host sees it again.
    let v = original.activate(None, &host).expect("activate");
    assert_eq!(v["count"], 2, "counted apart under a new CMID: {v}");
    let after = original.status(None).expect("status");
    assert_eq!(after["cmid_change"]["reason"], "clone_detected", "{after}");
    assert_ne!(after["cmid"], cmid);
    let data = s(&host.data_dir);
    let (_, clients) = tally_json_env(
        bin(),
        &["host", "clients", "--data-dir", data, "--json"],
        &[],
    );
    let rows = clients["clients"].as_array().expect("clients");
    assert_eq!(rows.len(), 2, "{clients}");
    let copied = rows
        .iter()
        .find(|r| r["cmid"] == cmid)
        .expect("the copied CMID's row");
    assert_eq!(copied["clones"], 1, "{copied}");
    let (_, events) = tally_json_env(
        bin(),
        &[
            "host",
            "events",
            "--data-dir",
            data,
            "--id",
            "1009",
            "--json",
        ],
        &[],
    );
    let events = events.as_array().expect("events");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["data"]["cmid"], cmid);
}
