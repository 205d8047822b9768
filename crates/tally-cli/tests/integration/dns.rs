//! R17–R19 against a real BIND9 `named` started by the test (see `tally_test_support::bind`):
//! hosts publish by RFC 2136 + TSIG, `dig` checks what is in the zone, clients discover hosts,
//! honour priority and weight, fail over and cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;
use tally_test_support::bind::{Named, write_key};
use tally_test_support::{HostProcess, tally, tally_json, wait_until};

use crate::bin;

const ZONE: &str = "example.test";
const SERVER_WEB: &str = "FW777-M677J-W8KJV-QG4VJ-HC6WP";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Writes a host config that publishes `fqdn` into the zone with `priority`.
fn host_config(dir: &Path, named: &Named, fqdn: &str, priority: u16, key_file: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let path = dir.join("host.toml");
    std::fs::write(
        &path,
        format!(
            "[dns]\nserver = \"{}\"\nkey_file = \"{}\"\nfqdn = \"{fqdn}\"\nrefresh_secs = 10\n\
             [[dns.domains]]\ndomain = \"{ZONE}\"\npriority = {priority}\nweight = 10\n",
            named.addr(),
            key_file.display()
        ),
    )
    .expect("write config");
    path
}

fn start_host(root: &Path, named: &Named, n: u8, priority: u16) -> HostProcess {
    let dir = root.join(format!("host{n}"));
    let config = host_config(
        &dir,
        named,
        &format!("host{n}.{ZONE}"),
        priority,
        &named.key_file,
    );
    HostProcess::start_on(
        bin(),
        &dir.join("data"),
        &format!("127.0.0.{n}:0"),
        &["--config", s(&config)],
    )
}

fn srv_records(named: &Named) -> Vec<String> {
    let mut v = named.dig(&format!("_tally._tcp.{ZONE}"), "SRV");
    v.sort();
    v
}

// R17, R18: three hosts publish into one RRset; dig sees all of them and their addresses; a
// record made by hand survives; a host that moves port replaces only its own record.
#[test]
fn r17_r18_hosts_share_one_srv_rrset() {
    let Some(named) = Named::start(ZONE) else {
        return;
    };
    assert!(named.nsupdate(&format!(
        "update add _tally._tcp.{ZONE}. 300 SRV 5 10 1688 manual.{ZONE}."
    )));
    let tmp = tempfile::tempdir().expect("tempdir");
    let hosts: Vec<HostProcess> = (1..=3)
        .map(|n| start_host(tmp.path(), &named, n, 0))
        .collect();
    let all = wait_until(Duration::from_secs(20), || {
        let v = srv_records(&named);
        (v.len() == 4).then_some(v)
    })
    .unwrap_or_else(|| {
        panic!(
            "records: {:?}\nhost log:\n{}",
            srv_records(&named),
            hosts[0].stderr()
        )
    });
    for (i, h) in hosts.iter().enumerate() {
        let n = i + 1;
        assert!(
            all.contains(&format!("0 10 {} host{n}.{ZONE}.", h.addr.port())),
            "{all:?}"
        );
        assert_eq!(
            named.dig(&format!("host{n}.{ZONE}"), "A"),
            vec![format!("127.0.0.{n}")]
        );
        assert!(
            h.wait_for_log("event_id=12294", Duration::from_secs(5)),
            "{}",
            h.stderr()
        );
    }
    assert!(
        all.iter().any(|r| r.ends_with(&format!("manual.{ZONE}."))),
        "a hand-made record survives: {all:?}"
    );
    // `host status --json` shows the publishing state.
    let (_, st) = tally_json(
        bin(),
        &[
            "host",
            "status",
            "--data-dir",
            s(&hosts[0].data_dir),
            "--json",
        ],
    );
    assert_eq!(st["dns"]["ok"], true, "{st}");
    assert_eq!(
        st["dns"]["results"][0]["record"],
        format!("_tally._tcp.{ZONE}")
    );

    // Host 1 restarts on another port: its old record goes, the others stay (R18).
    let mut hosts = hosts;
    let old_port = hosts[0].addr.port();
    drop(hosts.remove(0));
    let dir = tmp.path().join("host1");
    let moved = HostProcess::start_on(
        bin(),
        &dir.join("data"),
        "127.0.0.1:0",
        &["--config", s(&dir.join("host.toml"))],
    );
    let after = wait_until(Duration::from_secs(20), || {
        let v = srv_records(&named);
        v.iter()
            .any(|r| r == &format!("0 10 {} host1.{ZONE}.", moved.addr.port()))
            .then_some(v)
    })
    .unwrap_or_else(|| panic!("no new record: {:?}", srv_records(&named)));
    assert_eq!(after.len(), 4, "{after:?}");
    assert!(
        !after
            .iter()
            .any(|r| r == &format!("0 10 {old_port} host1.{ZONE}.")),
        "old record removed: {after:?}"
    );
}

// R17: an update signed with the wrong key is refused; the host logs event 12293 and says so.
#[test]
fn r17_wrong_tsig_key_is_refused_and_logged() {
    let Some(named) = Named::start(ZONE) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let wrong = tmp.path().join("wrong.key");
    write_key(&wrong, &named.key_name);
    let dir = tmp.path().join("h");
    let config = host_config(&dir, &named, &format!("bad.{ZONE}"), 0, &wrong);
    let host = HostProcess::start_on(
        bin(),
        &dir.join("data"),
        "127.0.0.1:0",
        &["--config", s(&config)],
    );
    assert!(
        host.wait_for_log("event_id=12293", Duration::from_secs(20)),
        "{}",
        host.stderr()
    );
    assert!(
        host.stderr().contains("TSIG"),
        "the log names the likely cause: {}",
        host.stderr()
    );
    assert!(srv_records(&named).is_empty());
    // R27: the failure is in the durable event log too.
    let (_, events) = tally_json(
        bin(),
        &[
            "host",
            "events",
            "--data-dir",
            s(&host.data_dir),
            "--id",
            "12293",
            "--json",
        ],
    );
    assert!(events.as_array().is_some_and(|e| !e.is_empty()), "{events}");
    let (_, st) = tally_json(
        bin(),
        &["host", "status", "--data-dir", s(&host.data_dir), "--json"],
    );
    assert_eq!(st["dns"]["ok"], false, "{st}");
    assert!(
        st["dns"]["results"][0]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
}

fn client(root: &Path, name: &str, trust: &Path, named: &Named) -> (PathBuf, Vec<String>) {
    let dir = root.join(name);
    assert!(
        tally(
            bin(),
            &["client", "--state-dir", s(&dir), "trust", s(trust)]
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
    let opts = vec![
        "--state-dir".to_owned(),
        s(&dir).to_owned(),
        "--dns-server".to_owned(),
        named.addr(),
        "--dns-search".to_owned(),
        ZONE.to_owned(),
        "--timeout".to_owned(),
        "2".to_owned(),
        "--json".to_owned(),
    ];
    (dir, opts)
}

fn run_client(opts: &[String], cmd: &[&str]) -> (Option<i32>, Value) {
    let mut args: Vec<&str> = vec!["client"];
    args.extend(opts.iter().map(String::as_str));
    args.extend_from_slice(cmd);
    tally_json(bin(), &args)
}

// R19: with no host configured, a client finds hosts in DNS, takes the lowest priority, caches
// it, fails over when it dies (back to DNS), and keeps using the cached host without DNS.
#[test]
fn r19_discover_activate_fail_over_and_cache() {
    let Some(named) = Named::start(ZONE) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut primary = start_host(tmp.path(), &named, 1, 0);
    let backup = start_host(tmp.path(), &named, 2, 10);
    assert!(
        wait_until(Duration::from_secs(20), || (srv_records(&named).len() == 2)
            .then_some(()))
        .is_some()
    );
    // Both hosts are dev hosts with their own authorities: the client trusts the primary's,
    // and the backup is given the same identity so either can answer.
    for f in ["host.key", "host.cert", "authority.pub"] {
        std::fs::copy(primary.data_dir.join(f), backup.data_dir.join(f)).expect("share identity");
    }
    let backup_dir = backup.data_dir.clone();
    let backup_addr = backup.addr;
    drop(backup);
    let backup = HostProcess::start_on(
        bin(),
        &backup_dir,
        &backup_addr.to_string(),
        &["--config", s(&tmp.path().join("host2/host.toml"))],
    );
    let (dir, opts) = client(
        tmp.path(),
        "c",
        &primary.data_dir.join("authority.pub"),
        &named,
    );

    let (_, report) = run_client(&opts, &["discover"]);
    let order: Vec<&str> = report["order"]
        .as_array()
        .expect("order")
        .iter()
        .filter_map(|c| c["target"].as_str())
        .collect();
    assert_eq!(
        order,
        [format!("host1.{ZONE}."), format!("host2.{ZONE}.")],
        "{report}"
    );
    assert!(
        report["probes"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["reachable"] == true)),
        "{report}"
    );

    let (code, v) = run_client(&opts, &["activate"]);
    assert_eq!((code, v["count"].as_u64()), (Some(2), Some(1)), "{v}");
    assert_eq!(
        v["status"]["cached_host"],
        primary.addr.to_string(),
        "lowest priority first, cached"
    );

    // The cached host dies: back to DNS, the primary is dropped, the backup answers and is cached.
    primary.kill9();
    let (_, report) = run_client(&opts, &["discover"]);
    assert!(
        report["probes"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("connect")),
        "{report}"
    );
    let (code, v) = run_client(&opts, &["activate"]);
    assert_eq!(code, Some(2), "{v}");
    assert_eq!(v["status"]["cached_host"], backup.addr.to_string(), "{v}");

    // With DNS gone, the cached host is still used.
    drop(named);
    let (code, v) = run_client(&opts, &["activate"]);
    assert_eq!(
        (code, v["status"]["cached_host"].as_str()),
        (Some(2), Some(&*backup.addr.to_string())),
        "{v}"
    );
    // R20: a manual host turns discovery off and clears the cached host.
    let (_, v) = run_client(&opts, &["set-host", &backup.addr.to_string()]);
    assert_eq!(v["status"]["cached_host"], Value::Null);
    drop(dir);
}

// R19: priority and weight from real SRV records: over many picks with a fixed seed, the first
// choice follows the weights within the lowest priority.
#[tokio::test]
async fn r19_priority_and_weight_from_real_records() {
    let Some(named) = Named::start(ZONE) else {
        return;
    };
    let name = format!("_tally._tcp.{ZONE}.");
    let mut cmds = String::new();
    for (host, prio, weight) in [("a", 0, 60), ("b", 0, 30), ("c", 0, 10), ("d", 5, 100)] {
        cmds.push_str(&format!(
            "update add {name} 300 SRV {prio} {weight} 1688 {host}.{ZONE}.\n"
        ));
        cmds.push_str(&format!("update add {host}.{ZONE}. 300 A 127.0.0.9\n"));
    }
    assert!(named.nsupdate(&cmds));
    let discovery = tally_dns::discover::Discovery {
        server: Some(named.addr().parse().expect("addr")),
        search: vec![ZONE.into()],
        label: String::new(),
    };
    let found = discovery.lookup().await.expect("lookup");
    assert_eq!(found.candidates.len(), 4, "{found:?}");
    let mut rng = StdRng::seed_from_u64(2026);
    let mut first = std::collections::HashMap::<String, u32>::new();
    let n = 10_000;
    for _ in 0..n {
        let o = tally_dns::discover::order(found.candidates.clone(), &mut rng);
        assert_eq!(
            o.last().map(|c| c.target.as_str()),
            Some(&*format!("d.{ZONE}.")),
            "priority 5 comes last"
        );
        *first.entry(o[0].target.clone()).or_default() += 1;
    }
    let share = |h: &str| {
        f64::from(first.get(&format!("{h}.{ZONE}.")).copied().unwrap_or(0)) / f64::from(n)
    };
    assert!((share("a") - 0.6).abs() < 0.03, "{first:?}");
    assert!((share("b") - 0.3).abs() < 0.03, "{first:?}");
    assert!((share("c") - 0.1).abs() < 0.03, "{first:?}");
}
