//! Issue 10, fleet mode with real processes: one real PostgreSQL server, two `tally authority
//! run` processes and three `tally host run` processes on one database, real `tally client`
//! processes over TCP.
//!
//! - X1: the hosts count as one (every count from 1 to 30 given once, across hosts and at
//!   once), one registry and one event log that say which host served whom, status and the
//!   admin API on any host show the fleet; R23 still counts machines (three host activations).
//! - X3: the database stops: clients get `storage_failure` quickly, hosts stay up and log the
//!   outage once; the primary dies and a synchronous standby is promoted: hosts continue on the
//!   multi-host URL without a restart and nothing acknowledged is lost.
//! - R19 + X1: one host is killed -9; its clients fail over through SRV to another host of the
//!   fleet and keep their count.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_test_support::authority::AuthorityDir;
use tally_test_support::bind::Named;
use tally_test_support::postgres::PgServer;
use tally_test_support::{Process, tally, tally_json, wait_until};

use crate::bin;

/// A client edition (threshold 25) of the demo catalog.
const WORKSTATION_PRO: &str = "FCK62-BC4QC-96T2H-XD989-PVGG9";
const ZONE: &str = "fleet.test";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn out_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One host of the fleet.
struct FleetHost {
    process: Process,
    addr: SocketAddr,
    admin: SocketAddr,
    data_dir: PathBuf,
}

/// PostgreSQL, the vendor's authority (two processes), three hosts.
struct Fleet {
    tmp: tempfile::TempDir,
    pg: PgServer,
    standby: Option<PgServer>,
    url: String,
    trust: PathBuf,
    authorities: Vec<(Process, SocketAddr)>,
    hosts: Vec<FleetHost>,
}

impl Fleet {
    /// Starts everything; `None` when PostgreSQL is missing outside CI (the harness prints
    /// the SKIP line). With `standby`, a synchronous streaming standby is started and every
    /// process gets the multi-host URL. `dns` gives each host a `[dns]` section.
    fn start(standby: bool, dns: Option<&Named>) -> Option<Self> {
        let pg = PgServer::start()?;
        pg.create_database("fleet");
        let standby = standby.then(|| {
            let s = pg.start_standby();
            pg.make_synchronous();
            s
        });
        let url = match &standby {
            Some(sb) => PgServer::failover_url(&[&pg, sb], "fleet"),
            None => pg.url("fleet"),
        };
        let tmp = tempfile::tempdir().expect("tempdir");
        let adir = tmp.path().join("vendor");
        let authority = AuthorityDir::init(bin(), adir.clone()).on_database(&url);
        let (key, _) = authority.issue_host_key("client-vl");
        // Two authority processes on the same database as the hosts (their tables and
        // migrations are separate).
        let authorities: Vec<(Process, SocketAddr)> = (0..2).map(|_| authority.run()).collect();
        let trust = adir.join("authority.pub");
        let mut fleet = Self {
            tmp,
            pg,
            standby,
            url,
            trust,
            authorities,
            hosts: Vec::new(),
        };
        for n in 1..=3u8 {
            let host = fleet.activate_host(n, &key);
            let config = dns.map(|named| fleet.dns_config(n, named));
            let h = fleet.run_host(n, &host, config.as_deref());
            fleet.hosts.push(h);
        }
        Some(fleet)
    }

    /// Installs the host key and activates host `n` online, alternating authority processes
    /// (R22, R23: each host is a machine of its own).
    fn activate_host(&self, n: u8, key: &str) -> PathBuf {
        let host = self.tmp.path().join(format!("host{n}"));
        let out = tally(
            bin(),
            &[
                "host",
                "install-key",
                "--data-dir",
                s(&host),
                "--database",
                &self.url,
                key,
            ],
        );
        assert!(out.status.success(), "{}", out_text(&out));
        let hw = self.tmp.path().join(format!("hw{n}.json"));
        std::fs::write(
            &hw,
            format!("{{\"disk\": \"disk-{n}\", \"board\": \"b-{n}\"}}"),
        )
        .expect("hw");
        let authority = self.authorities[usize::from(n) % 2].1;
        let out = std::process::Command::new(bin())
            .args([
                "host",
                "activate",
                "--data-dir",
                s(&host),
                "--database",
                &self.url,
                "--online",
                &format!("http://{authority}"),
                "--trust",
                s(&self.trust),
            ])
            .env("TALLY_HARDWARE_FILE", &hw)
            .env_remove("RUST_LOG")
            .output()
            .expect("run tally");
        assert!(out.status.success(), "{}", out_text(&out));
        host
    }

    fn dns_config(&self, n: u8, named: &Named) -> PathBuf {
        let path = self.tmp.path().join(format!("host{n}.toml"));
        std::fs::write(
            &path,
            format!(
                "[dns]\nserver = \"{}\"\nkey_file = \"{}\"\nfqdn = \"host{n}.{ZONE}\"\n\
                 refresh_secs = 10\n[[dns.domains]]\ndomain = \"{ZONE}\"\npriority = {}\n\
                 weight = 10\n",
                named.addr(),
                named.key_file.display(),
                u16::from(n) * 10
            ),
        )
        .expect("write config");
        path
    }

    fn run_host(&self, n: u8, dir: &Path, config: Option<&Path>) -> FleetHost {
        let listen = format!("127.0.0.{n}:0");
        let name = format!("host{n}");
        let mut args = vec![
            "host",
            "run",
            "--data-dir",
            s(dir),
            "--database",
            &self.url,
            "--listen",
            &listen,
            "--admin-listen",
            "127.0.0.1:0",
            "--host-name",
            &name,
        ];
        if let Some(c) = config {
            args.extend_from_slice(&["--config", s(c)]);
        }
        let (process, addrs) = Process::spawn_reading(
            bin(),
            &args,
            &[],
            &["tally host listening on ", "tally admin listening on "],
        );
        FleetHost {
            process,
            addr: addrs[0],
            admin: addrs[1],
            data_dir: dir.to_owned(),
        }
    }

    /// A fresh client machine `name` with the workstation key; activates once against `host`.
    fn activate(&self, name: &str, host: SocketAddr) -> (Option<i32>, Value) {
        let state = client_state(self.tmp.path(), name);
        tally_json(
            bin(),
            &[
                "client",
                "--state-dir",
                s(&state),
                "--trust",
                s(&self.trust),
                "--json",
                "activate",
                "--host",
                &host.to_string(),
                "--machine-name",
                name,
            ],
        )
    }

    fn host_json(&self, host: usize, cmd: &[&str]) -> Value {
        let mut args = vec!["host"];
        args.extend_from_slice(cmd);
        let dir = self.hosts[host].data_dir.clone();
        args.extend_from_slice(&["--data-dir", s(&dir), "--database", &self.url, "--json"]);
        let (code, v) = tally_json(bin(), &args);
        assert_eq!(code, Some(0), "{v}");
        v
    }
}

/// The state directory of client machine `name`, with the workstation key installed the
/// first time.
fn client_state(root: &Path, name: &str) -> PathBuf {
    let state = root.join("clients").join(name);
    if !state.join("state.json").exists() {
        let out = tally(
            bin(),
            &[
                "client",
                "--state-dir",
                s(&state),
                "install-key",
                WORKSTATION_PRO,
            ],
        );
        assert!(out.status.success(), "{}", out_text(&out));
    }
    state
}

fn count(v: &Value) -> u64 {
    v["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count in {v}"))
}

// X1 across real processes: 30 machines at once, spread over three hosts, get every count from 1
// to 30 exactly once, as one host would in commit order; the 25th and later are activated;
// renewals through another host are not counted twice. Every host's status, clients, events and
// admin API show the fleet, and say which host served each request.
#[test]
fn x1_three_hosts_count_as_one() {
    let Some(fleet) = Fleet::start(false, None) else {
        return;
    };
    let addrs: Vec<SocketAddr> = fleet.hosts.iter().map(|h| h.addr).collect();
    let results: Vec<(Option<i32>, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..30)
            .map(|n| {
                let fleet = &fleet;
                let host = addrs[n % 3];
                scope.spawn(move || fleet.activate(&format!("pc{n:02}"), host))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let mut counts: Vec<u64> = results.iter().map(|(_, v)| count(v)).collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=30).collect::<Vec<u64>>(), "{results:?}");
    for (code, v) in &results {
        let expected = if count(v) >= 25 { Some(0) } else { Some(2) };
        assert_eq!(*code, expected, "exit code follows the threshold: {v}");
    }
    // Renewals of five machines, each through another host than before: still 30.
    for n in 0..5 {
        let (_, v) = fleet.activate(&format!("pc{n:02}"), addrs[(n + 1) % 3]);
        assert_eq!(count(&v), 30, "R4 renewal across hosts: {v}");
    }
    for h in 0..3 {
        let status = fleet.host_json(h, &["status"]);
        let pools = status["pools"].as_array().expect("pools");
        assert_eq!(pools.len(), 1, "{status}");
        assert_eq!(pools[0]["count"], 30, "{status}");
        assert_eq!(status["registry_clients"], 30, "{status}");
        assert!(
            status["database"]
                .as_str()
                .is_some_and(|d| d.contains("PostgreSQL")),
            "{status}"
        );
    }
    let clients = fleet.host_json(1, &["clients", "--limit", "100"]);
    let rows = clients["clients"].as_array().expect("clients");
    assert_eq!(rows.len(), 30, "{clients}");
    for name in ["host1", "host2", "host3"] {
        assert!(
            rows.iter().any(|c| c["served_by"] == name),
            "{name} served someone: {clients}"
        );
    }
    let events = fleet.host_json(2, &["events", "--id", "12290", "--limit", "1000"]);
    let events = events.as_array().expect("events");
    assert_eq!(events.len(), 35, "one 12290 event per request, fleet-wide");
    let by_host1 = events
        .iter()
        .filter(|e| e["data"]["host"] == "host1")
        .count();
    assert!(by_host1 >= 10, "{by_host1} events from host1");
    // The admin API of any host shows the fleet's count.
    let h = &fleet.hosts[2];
    let token = std::fs::read_to_string(h.data_dir.join("admin.token")).expect("token");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let status: Value = rt.block_on(async {
        crate::http()
            .get(format!("http://{}/api/v1/status", h.admin))
            .bearer_auth(token.trim())
            .send()
            .await
            .expect("admin status")
            .json()
            .await
            .expect("json")
    });
    assert_eq!(status["pools"][0]["count"], 30, "{status}");
    // R23 still counts machines: the key's record shows three hosts.
    let (_, keys) = tally_json(
        bin(),
        &[
            "authority",
            "keys",
            "--dir",
            s(&fleet.tmp.path().join("vendor")),
            "--database",
            &fleet.url,
            "--json",
        ],
    );
    let hosts_used = keys
        .as_array()
        .and_then(|k| k.iter().find(|k| k["kind"] == "host"))
        .map(|k| k["hosts_used"].clone());
    assert_eq!(hosts_used, Some(Value::from(3)), "{keys}");
}

// X3: the database stops: a client is told storage_failure within its timeout, the host stays
// up and logs the outage once. The primary is gone for good and the synchronous standby is
// promoted: every host continues on the multi-host URL without a restart, with every
// acknowledged count.
#[test]
fn x3_outage_then_failover_to_a_promoted_standby() {
    let Some(mut fleet) = Fleet::start(true, None) else {
        return;
    };
    for n in 0..3 {
        let (_, v) = fleet.activate(&format!("pc{n}"), fleet.hosts[n].addr);
        assert_eq!(count(&v), n as u64 + 1, "{v}");
    }
    fleet.pg.stop_immediate();
    for n in 3..6 {
        let started = Instant::now();
        let (code, v) = fleet.activate(&format!("pc{n}"), fleet.hosts[0].addr);
        assert_eq!(
            (code, v["result"].as_str()),
            (Some(1), Some("storage_failure")),
            "{v}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "answered in {:?}, within the client's timeout",
            started.elapsed()
        );
    }
    let host = &mut fleet.hosts[0];
    assert!(host.process.is_running(), "the host stays up");
    let log = host.process.stderr();
    assert_eq!(
        log.matches("storage failing").count(),
        1,
        "one log line per outage, not per request:\n{log}"
    );
    let Some(standby) = fleet.standby.as_ref() else {
        panic!("started with a standby");
    };
    standby.promote();
    // The same host processes, without a restart, on the promoted standby.
    let pids: Vec<u32> = fleet.hosts.iter().map(|h| h.process.pid()).collect();
    let v = wait_until(Duration::from_secs(30), || {
        let (code, v) = fleet.activate("pc3", fleet.hosts[1].addr);
        (code == Some(2)).then_some(v)
    })
    .expect("the fleet resumes on the promoted standby");
    assert_eq!(
        count(&v),
        4,
        "the 3 acknowledged machines and this one: {v}"
    );
    let (_, v) = fleet.activate("pc4", fleet.hosts[0].addr);
    assert_eq!(count(&v), 5, "{v}");
    assert_eq!(
        pids,
        fleet
            .hosts
            .iter()
            .map(|h| h.process.pid())
            .collect::<Vec<_>>()
    );
    assert!(
        fleet.hosts[0]
            .process
            .wait_for_log("storage works again", Duration::from_secs(5)),
        "{}",
        fleet.hosts[0].process.stderr()
    );
}

// R19 with a fleet: hosts publish SRV records into a real BIND; clients find the lowest
// priority host, which is then killed -9; they fail over through SRV to the next host of the
// fleet, which knows their count.
#[test]
fn r19_kill9_a_fleet_host_and_clients_fail_over_with_their_count() {
    let Some(named) = Named::start(ZONE) else {
        return;
    };
    let Some(mut fleet) = Fleet::start(false, Some(&named)) else {
        return;
    };
    wait_until(Duration::from_secs(20), || {
        (named.dig(&format!("_tally._tcp.{ZONE}"), "SRV").len() == 3).then_some(())
    })
    .expect("three SRV records");
    let client = |name: &str| -> (Option<i32>, Value) {
        let state = client_state(fleet.tmp.path(), name);
        tally_json(
            bin(),
            &[
                "client",
                "--state-dir",
                s(&state),
                "--trust",
                s(&fleet.trust),
                "--dns-server",
                &named.addr(),
                "--dns-search",
                ZONE,
                "--timeout",
                "2",
                "--json",
                "activate",
                "--machine-name",
                name,
            ],
        )
    };
    for (n, name) in ["a", "b"].into_iter().enumerate() {
        let (_, v) = client(name);
        assert_eq!(count(&v), n as u64 + 1, "{v}");
        assert_eq!(
            v["status"]["cached_host"],
            fleet.hosts[0].addr.to_string(),
            "priority 10 first: {v}"
        );
    }
    fleet.hosts[0].process.kill9();
    let (_, v) = client("c");
    assert_eq!(count(&v), 3, "the next host knows the fleet's count: {v}");
    assert_eq!(
        v["status"]["cached_host"],
        fleet.hosts[1].addr.to_string(),
        "{v}"
    );
    let (_, v) = client("a");
    assert_eq!(
        count(&v),
        3,
        "a renewal through the new host is not counted twice: {v}"
    );
    assert_eq!(
        v["status"]["cached_host"],
        fleet.hosts[1].addr.to_string(),
        "{v}"
    );
}
