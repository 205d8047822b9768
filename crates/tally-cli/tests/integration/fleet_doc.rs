//! Issue 21 part 6: FLEET.md §1 runs as written on stock Debian, as root, with Debian's own
//! PostgreSQL tools (`pg_ctlcluster`, `su postgres -c`, scram-sha-256 from Debian's
//! `pg_hba.conf`), as the README's guide is run (`readme.rs`): the §1 ```sh block is extracted
//! and executed.
//!
//! What is substituted, and why: the block names Debian's default cluster (`15 main`, port
//! 5432). The test must not start or change the machine's own cluster (other software may use
//! it, and tests run in parallel), so it creates a Debian cluster of its own with
//! `pg_createcluster VERSION NAME -p FREE_PORT` (left down, as a container leaves `main`) and
//! runs the block with `15 main` replaced by `VERSION NAME` and `5432` by that port; nothing
//! else changes. The block's first line, `apt-get install -y postgresql`, is checked, not run
//! (the package must be installed, `dpkg -s`): a test does not upgrade a machine's packages.
//! The cluster is dropped at the end (`pg_dropcluster --stop`). Then a host starts
//! on the URL the block exported, activates a client, and `tally host status` on its data
//! directory finds the fleet with no variable.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tally_test_support::{HostProcess, skip, tally, tally_json};

use crate::bin;
use crate::readme::doc;

/// The lines of the first ```sh block of FLEET.md's §1 that starts with `apt-get install`.
fn section_one_block(fleet: &str) -> String {
    let start = fleet.find("## 1. PostgreSQL").expect("FLEET.md has §1");
    let rest = &fleet[start..];
    let end = rest.find("\n## 2.").unwrap_or(rest.len());
    let section = &rest[..end];
    let open = section
        .find("```sh\napt-get install")
        .expect("§1 has the Debian block");
    let body = &section[open + "```sh\n".len()..];
    let close = body.find("```").expect("block closed");
    body[..close].to_owned()
}

/// A Debian cluster of the test's own, dropped (stopped first) when this is dropped.
struct Cluster {
    version: String,
    name: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster")
            .args(["--stop", &self.version, &self.name])
            .status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn fleet_section_one_runs_as_written_on_debian() {
    let test = "fleet_section_one_runs_as_written_on_debian";
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !root || !Path::new("/usr/bin/pg_createcluster").exists() {
        skip(
            test,
            "needs root and Debian's postgresql-common (pg_createcluster): apt-get install postgresql",
        );
        return;
    }
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let Some(version) = versions.last().map(u32::to_string) else {
        skip(test, "no PostgreSQL server in /usr/lib/postgresql");
        return;
    };
    let name = format!("tallydoc{}", std::process::id());
    let port = free_port().to_string();
    let out = Command::new("pg_createcluster")
        .args([&version, &name, "-p", &port])
        .output()
        .expect("pg_createcluster");
    assert!(out.status.success(), "pg_createcluster: {out:?}");
    let _cluster = Cluster {
        version: version.clone(),
        name: name.clone(),
    };

    let fleet = doc("docs/FLEET.md");
    let block = section_one_block(&fleet);
    for needed in [
        "pg_ctlcluster 15 main",
        "su postgres -c",
        "PASSWORD '",
        "export TALLY_DATABASE_URL",
    ] {
        assert!(block.contains(needed), "§1 uses {needed:?}:\n{block}");
    }
    assert!(!block.contains("sudo"), "no sudo on stock Debian:\n{block}");
    assert!(
        block.starts_with("apt-get install -y postgresql\n"),
        "§1 starts by installing PostgreSQL:\n{block}"
    );
    let installed = Command::new("dpkg")
        .args(["-s", "postgresql"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        installed,
        "the postgresql package is installed (.ci/run installs it)"
    );
    let script = block
        .trim_start_matches("apt-get install -y postgresql\n")
        .replace("15 main", &format!("{version} {name}"))
        .replace("5432", &port);
    let tmp = tempfile::tempdir().expect("tempdir");
    let url_file = tmp.path().join("url");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail\n{script}\nprintf %s \"$TALLY_DATABASE_URL\" > '{}'\n",
            url_file.display()
        ))
        // psql as `postgres` cannot enter the test's directory; `/` it can.
        .current_dir("/")
        .env_remove("TALLY_DATABASE_URL")
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "FLEET.md §1 failed:\n{script}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let url = std::fs::read_to_string(&url_file).expect("the block exported the URL");
    assert!(url.contains(&port), "{url}");

    // The URL works: a host counts a client on it, and its data directory remembers it.
    let dir = tmp.path().join("host1");
    let mut host = HostProcess::start_dev(bin(), &dir, &["--database", &url]);
    let state = tmp.path().join("pc1");
    let out = tally(
        bin(),
        &[
            "client",
            "--state-dir",
            state.to_str().expect("utf-8"),
            "install-key",
            "FW777-M677J-W8KJV-QG4VJ-HC6WP",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let (_, v) = tally_json(
        bin(),
        &[
            "client",
            "--state-dir",
            state.to_str().expect("utf-8"),
            "--trust",
            dir.join("authority.pub").to_str().expect("utf-8"),
            "--json",
            "activate",
            "--host",
            &host.addr.to_string(),
            "--machine-name",
            "pc1",
        ],
    );
    assert_eq!(v["count"].as_u64(), Some(1), "{v}");
    let (code, v) = tally_json(
        bin(),
        &[
            "host",
            "status",
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{v}");
    assert!(
        v.to_string().contains(&format!("127.0.0.1:{port}/fleet")),
        "{v}"
    );
    // Debian's cluster asks for the password: without it, one line that says so. (Another URL
    // than the remembered one, so the directory's password is not filled in.)
    let bare = url.replacen(":change-me@", "@", 1) + "?sslmode=disable";
    let out = tally(
        bin(),
        &[
            "host",
            "status",
            "--data-dir",
            dir.to_str().expect("utf-8"),
            "--database",
            &bare,
        ],
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("asks for a password and none was given"),
        "{text}"
    );
    assert!(host.terminate(Duration::from_secs(20)).is_some());
}
