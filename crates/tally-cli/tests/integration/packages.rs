//! Issue 22: the Debian packages as an admin installs them (docs/PACKAGING.md). `dpkg -i` the
//! packages `scripts/dist.sh` built, `systemd-analyze verify` every unit, set up a vendor's
//! authority and a customer's host as the packaged units run them, activate clients, upgrade to
//! rebuilt packages with a higher version and show the data kept, then `dpkg --purge` and show
//! what is left.
//!
//! systemd is not PID 1 here, so each unit's `ExecStart` runs as its unit says, by hand: in its
//! own network namespace (a machine on a `NetLab` bridge, so the packaged `0.0.0.0:1688` and
//! `127.0.0.1:8080` cannot collide with anything), with its `EnvironmentFile`, `User=`/`Group=`
//! (`setpriv`), `NoNewPrivileges=`, an empty `CapabilityBoundingSet=`, `UMask=`, and
//! `ProtectSystem=strict`/`PrivateTmp=` approximated by a private mount namespace where `/` is
//! read-only but the `StateDirectory=` and `/tmp` is empty. The remaining systemd sandboxing
//! (seccomp filters, `Protect*` of /proc and /sys) is checked by `systemd-analyze verify` only.
//!
//! It installs system packages, so it runs as root and only when asked: under CI, or with
//! `TALLY_PACKAGE_TEST=1`; otherwise it skips visibly. With `TALLY_PACKAGE_REPORT=FILE` it
//! writes its timings there (`.ci/run` prints them).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tally_test_support::netns::{Machine, NetLab};
use tally_test_support::{Process, in_ci, skip};

use super::dist::{artifact, dir, has, run_ok, show};

const TEST: &str = "packages_install_serve_upgrade_and_purge";
/// Acme Server Web 2026: a server edition, threshold 5 (R1).
const SERVER_KEY: &str = "FW777-M677J-W8KJV-QG4VJ-HC6WP";
const PACKAGES: [&str; 6] = [
    "tally",
    "tally-host",
    "tally-agent",
    "tally-authority",
    "libtally0",
    "libtally-dev",
];
/// Marks a /var/lib/tally this test made, so a rerun may clear it (never an admin's).
const MARKER: &str = "/var/lib/tally/.made-by-package-test";

/// The `[Service]` settings of a unit file (the last value of a key wins, as in systemd).
fn service_section(unit: &Path) -> HashMap<String, String> {
    let text = std::fs::read_to_string(unit).unwrap();
    let mut in_service = false;
    let mut map = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service
            && !line.starts_with('#')
            && let Some((k, v)) = line.split_once('=')
        {
            map.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    map
}

/// `KEY=VALUE` lines of an environment file.
fn env_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The command a unit's `[Service]` section runs, in `machine`, sandboxed as described in the
/// module docs.
fn unit_command(unit: &Path, machine: &Machine) -> Command {
    let s = service_section(unit);
    let get = |k: &str| {
        s.get(k)
            .unwrap_or_else(|| panic!("{} has no {k}=", unit.display()))
            .clone()
    };
    let env: Vec<(String, String)> = s
        .get("EnvironmentFile")
        .map(|f| env_file(Path::new(f.trim_start_matches('-'))))
        .unwrap_or_default();
    let mut exec = get("ExecStart");
    for (k, v) in &env {
        exec = exec.replace(&format!("${{{k}}}"), v);
    }
    assert!(!exec.contains("${"), "unexpanded variable in {exec}");
    let state = format!("/var/lib/{}", get("StateDirectory"));
    assert_eq!(get("NoNewPrivileges"), "yes");
    assert_eq!(get("ProtectSystem"), "strict");
    assert_eq!(get("CapabilityBoundingSet"), "");
    let script = format!(
        "set -e; mount --bind {state} {state}; mount -o remount,bind,ro /; \
         mount -t tmpfs -o mode=1777 tmpfs /tmp; umask {umask}; \
         exec setpriv --reuid={user} --regid={group} --init-groups --no-new-privs \
         --bounding-set=-all --inh-caps=-all -- {exec}",
        umask = get("UMask"),
        user = get("User"),
        group = get("Group"),
    );
    let mut cmd = machine.command("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env);
    cmd
}

fn as_user(user: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", user, "--", "/usr/bin/tally"]).args(args);
    cmd.current_dir("/");
    cmd
}

fn dpkg(args: &[&str], debs: &[PathBuf]) -> String {
    run_ok(
        Command::new("dpkg")
            .args(["--force-confdef", "--force-confold"])
            .args(args)
            .args(debs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn installed_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status} ${Version}", package])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.strip_prefix("install ok installed ")
        .map(str::to_owned)
}

fn mode_owner(path: &str) -> String {
    run_ok(Command::new("stat").args(["-c", "%a %U:%G", path]))
        .trim()
        .to_owned()
}

/// The same package with a higher version (`…-1` → `…-1+up1`), rebuilt with dpkg-deb: what an
/// admin gets from the next release.
fn bumped(deb: &Path, out_dir: &Path) -> PathBuf {
    let tree = out_dir.join(deb.file_stem().unwrap());
    run_ok(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let text = text
        .lines()
        .map(|l| match l.strip_prefix("Version: ") {
            Some(v) => format!("Version: {v}+up1"),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&control, text + "\n").unwrap();
    let out = out_dir.join(format!(
        "{}+up1.deb",
        deb.file_stem().unwrap().to_string_lossy()
    ));
    run_ok(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-b"])
            .arg(&tree)
            .arg(&out),
    );
    out
}

/// Installs (trust, key) and activates one client against `host`; returns the exit code.
fn client(state: &Path, host: &str, trust: &str) -> (Option<i32>, String) {
    let s = state.to_str().unwrap();
    run_ok(Command::new("/usr/bin/tally").args(["client", "--state-dir", s, "trust", trust]));
    run_ok(Command::new("/usr/bin/tally").args([
        "client",
        "--state-dir",
        s,
        "install-key",
        SERVER_KEY,
    ]));
    let out = Command::new("/usr/bin/tally")
        .args(["client", "--state-dir", s, "activate", "--host", host])
        .output()
        .unwrap();
    (out.status.code(), show(&out))
}

/// Clears what an earlier, interrupted run of this test left (never an admin's own install).
fn clear_earlier_run() {
    let ours = Path::new(MARKER).exists();
    for p in PACKAGES {
        if installed_version(p).is_some() {
            assert!(
                ours,
                "{p} is installed and not by this test: it would purge it; run on a clean machine"
            );
        }
    }
    if ours {
        let _ = Command::new("dpkg").arg("--purge").args(PACKAGES).output();
        let _ = std::fs::remove_dir_all("/var/lib/tally");
        let _ = std::fs::remove_dir_all("/etc/tally");
    }
}

#[test]
fn packages_install_serve_upgrade_and_purge() {
    let asked = in_ci() || std::env::var_os("TALLY_PACKAGE_TEST").is_some_and(|v| v == "1");
    if !asked {
        return skip(
            TEST,
            "installs system packages: runs under CI or with TALLY_PACKAGE_TEST=1",
        );
    }
    let Some(dist) = dir(TEST) else { return };
    let is_root = run_ok(Command::new("id").arg("-u")).trim() == "0";
    for (ok, what) in [
        (is_root, "root (dpkg -i)"),
        (has("dpkg", "--version"), "dpkg"),
        (has("systemd-analyze", "--version"), "systemd-analyze"),
        (has("setpriv", "--version"), "setpriv (util-linux)"),
        (has("unshare", "--version"), "unshare (util-linux)"),
        (has("pkg-config", "--version"), "pkg-config"),
    ] {
        if !ok {
            return skip(TEST, &format!("needs {what}"));
        }
    }
    let Some(lab) = NetLab::new() else { return };
    let _heavy = crate::heavy();
    clear_earlier_run();
    let debs: Vec<PathBuf> = PACKAGES
        .iter()
        .map(|p| artifact(&dist, &format!("{p}_"), ".deb"))
        .collect();
    let tmp = tempfile::tempdir().unwrap();

    // ── install ────────────────────────────────────────────────────────────────────────────
    let t0 = Instant::now();
    dpkg(&["-i"], &debs);
    let installed = t0.elapsed();
    std::fs::write(MARKER, "").unwrap();
    let version = installed_version("tally").expect("tally installed");
    let tally_version = run_ok(Command::new("/usr/bin/tally").arg("--version"));
    assert!(
        tally_version.contains("(commit "),
        "--version names the commit: {tally_version}"
    );
    // The system users, the directories and the conffiles, with their modes.
    for user in ["tally-host", "tally-authority"] {
        run_ok(Command::new("getent").args(["passwd", user]));
    }
    assert_eq!(mode_owner("/var/lib/tally"), "755 root:root");
    assert_eq!(
        mode_owner("/var/lib/tally/host"),
        "700 tally-host:tally-host"
    );
    assert_eq!(
        mode_owner("/var/lib/tally/authority"),
        "700 tally-authority:tally-authority"
    );
    assert_eq!(mode_owner("/var/lib/tally/client"), "755 root:root");
    assert_eq!(mode_owner("/etc/tally/host.toml"), "640 root:tally-host");
    assert_eq!(
        mode_owner("/etc/tally/authority.env"),
        "640 root:tally-authority"
    );
    let conffiles = run_ok(Command::new("dpkg-query").args([
        "-W",
        "-f",
        "${Conffiles}\n",
        "tally-host",
        "tally-authority",
        "tally-agent",
    ]));
    for f in [
        "/etc/tally/host.toml",
        "/etc/tally/host.env",
        "/etc/tally/authority.env",
        "/etc/tally/agent.env",
    ] {
        assert!(conffiles.contains(f), "{f} is a conffile: {conffiles}");
    }
    // Man pages, completions, the SDK where pkg-config and CMake look.
    for f in [
        "/usr/share/man/man1/tally.1.gz",
        "/usr/share/man/man1/tally-host-run.1.gz",
        "/usr/share/bash-completion/completions/tally",
        "/usr/share/zsh/vendor-completions/_tally",
        "/usr/share/fish/vendor_completions.d/tally.fish",
        "/usr/include/tally.h",
        "/usr/lib/libtally.a",
        "/usr/lib/cmake/Tally/TallyConfig.cmake",
    ] {
        assert!(Path::new(f).exists(), "{f} installed");
    }
    let so = std::fs::read_link("/usr/lib/libtally.so.0").expect("libtally.so.0 symlink");
    assert!(so.to_string_lossy().starts_with("libtally.so.0."), "{so:?}");
    let pc = run_ok(Command::new("pkg-config").args(["--modversion", "tally"]));
    assert!(
        version.starts_with(pc.trim()),
        "pkg-config {pc} vs {version}"
    );

    // ── every unit verifies ────────────────────────────────────────────────────────────────
    let files =
        run_ok(Command::new("dpkg").args(["-L", "tally-host", "tally-agent", "tally-authority"]));
    let units: Vec<PathBuf> = files
        .lines()
        .filter(|l| l.ends_with(".service"))
        .map(PathBuf::from)
        .collect();
    assert_eq!(units.len(), 3, "one unit per service package: {units:?}");
    for unit in &units {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(unit)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "systemd-analyze verify {}\n{}",
            unit.display(),
            show(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let unit_name = unit.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !stderr.lines().any(|l| l.contains(&unit_name)),
            "systemd-analyze complains about {unit_name}:\n{stderr}"
        );
    }
    let unit = |name: &str| {
        units
            .iter()
            .find(|u| u.file_name().is_some_and(|n| n == name))
            .unwrap()
            .clone()
    };

    // ── the vendor's authority, as its unit runs it ────────────────────────────────────────
    let machine = lab.machine("srv");
    run_ok(&mut as_user(
        "tally-authority",
        &["authority", "init", "--dir", "/var/lib/tally/authority"],
    ));
    let issued = run_ok(&mut as_user(
        "tally-authority",
        &[
            "authority",
            "issue-host-key",
            "--dir",
            "/var/lib/tally/authority",
            "--group",
            "server-c",
            "--json",
        ],
    ));
    let issued: serde_json::Value = serde_json::from_str(&issued).unwrap();
    let host_key = issued["key"].as_str().unwrap().to_owned();
    // The vendor hands out its public key; the customer keeps it beside the config.
    std::fs::copy(
        "/var/lib/tally/authority/authority.pub",
        "/etc/tally/authority.pub",
    )
    .unwrap();
    let (authority, auth_addr) = Process::spawn_command(
        unit_command(&unit("tally-authority.service"), &machine),
        &["tally authority listening on "],
    );
    let auth_addr = auth_addr[0];

    // ── the customer's host: key, online activation, then the unit ─────────────────────────
    run_ok(&mut as_user(
        "tally-host",
        &[
            "host",
            "install-key",
            "--data-dir",
            "/var/lib/tally/host",
            &host_key,
        ],
    ));
    let mut activate = machine.command("runuser");
    activate.args([
        "-u",
        "tally-host",
        "--",
        "/usr/bin/tally",
        "host",
        "activate",
        "--data-dir",
        "/var/lib/tally/host",
        "--online",
        &format!("http://{auth_addr}"),
        "--trust",
        "/etc/tally/authority.pub",
    ]);
    run_ok(&mut activate);
    let host_unit = unit("tally-host.service");
    let (mut host, addrs) = Process::spawn_command(
        unit_command(&host_unit, &machine),
        &["tally host listening on "],
    );
    assert_eq!(addrs[0].port(), 1688, "the packaged config's port");
    let host_addr = format!("{}:1688", machine.addr);

    // ── clients: the fifth activates (R1) ──────────────────────────────────────────────────
    let mut first_activation = None;
    for i in 1..=5 {
        let (code, text) = client(
            &tmp.path().join(format!("pc{i}")),
            &host_addr,
            "/etc/tally/authority.pub",
        );
        let want = if i < 5 { Some(2) } else { Some(0) };
        assert_eq!(code, want, "client {i}: {text}\nhost:\n{}", host.stderr());
        if code == Some(0) {
            first_activation = Some(t0.elapsed());
        }
    }
    let first_activation = first_activation.unwrap();
    assert!(
        host.terminate(Duration::from_secs(30)).is_some(),
        "host stops on SIGTERM"
    );
    let data_before = list("/var/lib/tally/host");
    assert!(
        data_before.iter().any(|f| f.contains("host-product.key")),
        "{data_before:?}"
    );

    // ── upgrade: the admin's edit and the data survive ─────────────────────────────────────
    let edited = format!(
        "{}# edited by the admin\n",
        std::fs::read_to_string("/etc/tally/host.toml").unwrap()
    );
    std::fs::write("/etc/tally/host.toml", &edited).unwrap();
    let newer: Vec<PathBuf> = debs.iter().map(|d| bumped(d, tmp.path())).collect();
    dpkg(&["-i"], &newer);
    assert_eq!(
        installed_version("tally-host"),
        Some(format!("{version}+up1"))
    );
    assert_eq!(
        std::fs::read_to_string("/etc/tally/host.toml").unwrap(),
        edited
    );
    assert_eq!(
        mode_owner("/var/lib/tally/host"),
        "700 tally-host:tally-host"
    );
    let data_after = list("/var/lib/tally/host");
    assert_eq!(
        data_before, data_after,
        "the host's files are kept on upgrade"
    );
    // The host remembers its count: the sixth machine activates at once.
    let (mut host, _) = Process::spawn_command(
        unit_command(&host_unit, &machine),
        &["tally host listening on "],
    );
    let (code, text) = client(
        &tmp.path().join("pc6"),
        &host_addr,
        "/etc/tally/authority.pub",
    );
    assert_eq!(code, Some(0), "sixth client after the upgrade: {text}");
    assert!(host.terminate(Duration::from_secs(30)).is_some());
    drop(authority);

    // ── purge: configuration goes, data and users stay ─────────────────────────────────────
    let purge_order = [
        "libtally-dev",
        "libtally0",
        "tally-host",
        "tally-agent",
        "tally-authority",
        "tally",
    ];
    run_ok(Command::new("dpkg").arg("--purge").args(purge_order));
    for p in PACKAGES {
        assert_eq!(installed_version(p), None, "{p} purged");
    }
    assert!(!Path::new("/usr/bin/tally").exists());
    assert!(
        !Path::new("/etc/tally/host.toml").exists(),
        "conffiles purged"
    );
    let data_left = list("/var/lib/tally/host");
    assert!(
        data_before.iter().all(|f| data_left.contains(f)),
        "data kept on purge: {data_before:?} vs {data_left:?}"
    );
    run_ok(Command::new("getent").args(["passwd", "tally-host"]));
    let left = run_ok(
        Command::new("sh")
            .args([
                "-c",
                "find /var/lib/tally /etc/tally -maxdepth 2 2>/dev/null | sort; true",
            ])
            .env("LC_ALL", "C"),
    );
    let report = format!(
        "package test: version {version}; dpkg -i of {n} packages: {:.1} s; dpkg -i to the first \
         activation (authority and host set up as the units run them, 5 clients): {:.1} s\n\
         package test: left after dpkg --purge (users tally-host, tally-authority kept):\n{left}",
        installed.as_secs_f64(),
        first_activation.as_secs_f64(),
        n = debs.len(),
    );
    eprintln!("{report}");
    if let Some(path) = std::env::var_os("TALLY_PACKAGE_REPORT") {
        std::fs::write(path, &report).unwrap();
    }
    // What an admin deletes by hand to remove everything (docs/PACKAGING.md).
    std::fs::remove_dir_all("/var/lib/tally").unwrap();
}

/// File names under `dir`, sorted (run as root: the directory is 0700).
/// The files of `dir`, sorted, without SQLite's `-wal`/`-shm` side files: SQLite removes them
/// when the host closes its database cleanly and keeps them after an unclean stop, so they
/// come and go with how the host stopped, not with what a package did to the data.
fn list(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with("-wal") && !n.ends_with("-shm"))
        .collect();
    v.sort();
    v
}
