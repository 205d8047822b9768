//! X5, the host side, with real processes and real clock changes (libfaketime): no host clock
//! deletes data or inflates a count.
//!
//! - A single host restarted ten years ahead keeps its registry and events, holds retention back
//!   and says why (events 1007 and 1008); it once deleted everything in its start-up pass.
//! - A fleet host restarted a year ahead deletes nothing and expires nobody: the fleet counts on
//!   the database's clock; the host says its clock disagrees with the database's (event 1007).
//! - A host whose clock ran ten years ahead and came back: the machines it saw then are pulled
//!   back to real time and lapse 30 real days later (R4); they once never expired.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tally_test_support::postgres::PgServer;
use tally_test_support::{HostProcess, faketime, tally, tally_json, tally_json_env};

use crate::bin;

/// A server edition of the demo catalog: threshold 5 (R1).
const SERVER_WEB: &str = "FW777-M677J-W8KJV-QG4VJ-HC6WP";
const WAIT: Duration = Duration::from_secs(20);

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A client that trusts `host`'s authority, with a server setup key; activates once (its own
/// clock moved by `envs`) and returns the count it was given.
fn activate(root: &Path, name: &str, host: &HostProcess, envs: &[(&str, &str)]) -> u64 {
    let dir = root.join(name);
    let trust = host.data_dir.join("authority.pub");
    for args in [
        vec!["client", "--state-dir", s(&dir), "trust", s(&trust)],
        vec!["client", "--state-dir", s(&dir), "install-key", SERVER_WEB],
    ] {
        let out = tally(bin(), &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let addr = host.addr.to_string();
    let args = [
        "client",
        "--state-dir",
        s(&dir),
        "--json",
        "activate",
        "--host",
        &addr,
        "--machine-name",
        name,
    ];
    let (_, v) = tally_json_env(bin(), &args, envs);
    v["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("{name}: no count in {v}"))
}

/// `tally host ARGS… --json` against the running host's admin API.
fn admin(host: &HostProcess, args: &[&str]) -> Value {
    let url = format!("http://{}", host.admin);
    let token = host.data_dir.join("admin.token");
    let remote = [
        "--target",
        url.as_str(),
        "--token-file",
        s(&token),
        "--json",
    ];
    let (code, v) = tally_json(bin(), &[&["host"][..], args, &remote].concat());
    assert_eq!(code, Some(0), "{args:?}: {v}");
    v
}

fn events(host: &HostProcess, id: u32) -> Vec<Value> {
    let id = id.to_string();
    let v = admin(host, &["events", "--id", &id, "--limit", "1000"]);
    v.as_array().cloned().unwrap_or_default()
}

fn machines(host: &HostProcess) -> Vec<Value> {
    let v = admin(host, &["clients", "--limit", "1000"]);
    v["clients"].as_array().cloned().unwrap_or_default()
}

fn stop(mut host: HostProcess) {
    assert!(host.terminate(WAIT).is_some(), "host did not stop");
}

fn now_ms() -> i64 {
    tally_core::Clock::now(&tally_core::SystemClock).millis()
}

// X5: a single host restarted ten years ahead keeps every registry row and event (its start-up
// retention pass once deleted them all), holds retention back and raises the clock event.
#[test]
fn x5_a_host_restarted_ten_years_ahead_keeps_its_registry_and_events() {
    let Some(ahead) = faketime::env("+3650d") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("host");
    let host = HostProcess::start_dev(bin(), &dir, &[]);
    for n in 0..3 {
        assert_eq!(activate(tmp.path(), &format!("pc-{n}"), &host, &[]), n + 1);
    }
    stop(host);

    let host = HostProcess::start_env(bin(), &dir, "127.0.0.1:0", &[], &faketime::pairs(&ahead));
    assert!(
        host.wait_for_log("retention held back", WAIT),
        "{}",
        host.stderr()
    );
    assert_eq!(machines(&host).len(), 3, "the registry is whole");
    assert_eq!(events(&host, 12290).len(), 3, "the event log is whole");
    let suspect = events(&host, 1007);
    assert_eq!(suspect.len(), 1, "one clock event");
    assert_eq!(
        suspect[0]["data"]["findings"][0]["reference"],
        "trusted_mark"
    );
    assert_eq!(
        events(&host, 1008).len(),
        1,
        "retention says why it held back"
    );
    let status = admin(&host, &["status"]);
    assert_eq!(status["clock"]["suspect"], true, "{status}");
    assert_eq!(
        status["clock"]["retention_held_back"]["reference"], "trusted_mark",
        "{status}"
    );
    stop(host);
}

// X5, X1: two hosts on one PostgreSQL; one restarted a year ahead. No row of the fleet is deleted,
// no pool loses its live entries (the next clients, through either host, get the right count),
// entries are stamped on the database's clock, and the skewed host raises the clock event.
#[test]
fn x5_a_fleet_host_a_year_ahead_deletes_nothing_and_expires_nobody() {
    let Some(ahead) = faketime::env("+365d") else {
        return;
    };
    let Some(pg) = PgServer::start() else {
        return;
    };
    pg.create_database("fleet");
    let url = pg.url("fleet");
    let tmp = tempfile::tempdir().expect("tempdir");
    let fleet = ["--database", url.as_str()];
    let a = HostProcess::start_dev(
        bin(),
        &tmp.path().join("a"),
        &[&fleet[..], &["--host-name", "a"]].concat(),
    );
    let b_dir = tmp.path().join("b");
    let b_args = [&fleet[..], &["--host-name", "b"]].concat();
    let b = HostProcess::start_dev(bin(), &b_dir, &b_args);
    for n in 0..4 {
        assert_eq!(activate(tmp.path(), &format!("pc-{n}"), &a, &[]), n + 1);
    }
    stop(b);

    let b = HostProcess::start_env(
        bin(),
        &b_dir,
        "127.0.0.1:0",
        &b_args,
        &faketime::pairs(&ahead),
    );
    assert!(
        b.wait_for_log("host clock disagrees", WAIT),
        "{}",
        b.stderr()
    );
    // The first request through the skewed host: once, it emptied the pool fleet-wide.
    assert_eq!(activate(tmp.path(), "via-b", &b, &[]), 5, "nobody expired");
    assert_eq!(
        activate(tmp.path(), "via-a", &a, &[]),
        6,
        "the fleet's count"
    );
    assert_eq!(machines(&a).len(), 6, "no registry row deleted");
    let requests = events(&a, 12290);
    assert_eq!(requests.len(), 6, "no event deleted");
    let latest = requests.iter().filter_map(|e| e["at"].as_i64()).max();
    assert!(
        latest.is_some_and(|at| at <= now_ms() + 60_000),
        "stamped on the database's clock, not a year ahead: {latest:?}"
    );
    let suspect: Vec<Value> = events(&a, 1007);
    assert_eq!(suspect.len(), 1, "{suspect:?}");
    assert_eq!(suspect[0]["data"]["host"], "b");
    assert_eq!(suspect[0]["data"]["findings"][0]["reference"], "database");
    let status = admin(&b, &["status"]);
    assert_eq!(status["clock"]["suspect"], true, "{status}");
    assert_eq!(status["pools"][0]["count"], 6, "{status}");
    assert_eq!(
        events(&a, 1008).len(),
        0,
        "the database's clock is trusted: no hold-back"
    );
    stop(b);
}

// X5, R4: a host ran ten years ahead and came back. The machines it saw then count at real time
// (they were seen within 30 real days) and lapse 30 real days later; the count is what the
// machines seen in 30 real days make. (The measured failure: they never expired, and a lone
// new machine got count 6 of 5 long after.)
#[test]
fn x5_machines_seen_ten_years_ahead_lapse_thirty_real_days_later() {
    let (Some(ahead), Some(later)) = (faketime::env("+3650d"), faketime::env("+31d")) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("host");
    // The host ran at real time first (its clock was trusted then).
    stop(HostProcess::start_dev(bin(), &dir, &[]));

    let host = HostProcess::start_env(bin(), &dir, "127.0.0.1:0", &[], &faketime::pairs(&ahead));
    for n in 0..5 {
        assert_eq!(
            activate(tmp.path(), &format!("then-{n}"), &host, &[]),
            n + 1
        );
    }
    stop(host);

    // Back at real time: the stamps from ten years ahead are pulled back to now.
    let host = HostProcess::start_dev(bin(), &dir, &[]);
    assert!(
        host.wait_for_log("times stamped in the future pulled back", WAIT),
        "{}",
        host.stderr()
    );
    let limit = now_ms() + 60_000;
    for m in machines(&host) {
        assert!(m["last_seen"].as_i64().is_some_and(|t| t <= limit), "{m}");
    }
    assert_eq!(
        activate(tmp.path(), "now", &host, &[]),
        6,
        "six seen within 30 real days"
    );
    stop(host);

    // 31 days later (host and client clocks): none of them counts any more.
    let pairs = faketime::pairs(&later);
    let host = HostProcess::start_env(bin(), &dir, "127.0.0.1:0", &[], &pairs);
    let status = admin(&host, &["status"]);
    assert_eq!(status["pools"][0]["count"], 0, "{status}");
    assert_eq!(
        activate(tmp.path(), "later", &host, &pairs),
        1,
        "a lone new machine"
    );
    stop(host);
}
