//! Issue 12, start-up and recovery with real processes: one host per data directory; a full
//! disk gives `storage_failure` without phantom counts and heals by itself; a database the host
//! cannot write is refused before "started"; an empty database file is warned about; `tally host
//! check` reads the database in full.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tally_test_support::{HostProcess, in_ci, tally, tally_json};

use crate::bin;

const SERVER_WEB: &str = "FW777-M677J-W8KJV-QG4VJ-HC6WP";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn activate(root: &Path, name: &str, host: &HostProcess) -> (Option<i32>, Value) {
    let state = root.join("clients").join(name);
    if !state.join("state.json").exists() {
        let out = tally(
            bin(),
            &[
                "client",
                "--state-dir",
                s(&state),
                "install-key",
                SERVER_WEB,
            ],
        );
        assert!(out.status.success(), "{out:?}");
    }
    let trust = host.data_dir.join("authority.pub");
    tally_json(
        bin(),
        &[
            "client",
            "--state-dir",
            s(&state),
            "--trust",
            s(&trust),
            "--json",
            "activate",
            "--host",
            &host.addr.to_string(),
            "--machine-name",
            name,
        ],
    )
}

fn pool_count(data_dir: &Path) -> u64 {
    let (code, v) = tally_json(
        bin(),
        &["host", "status", "--data-dir", s(data_dir), "--json"],
    );
    assert_eq!(code, Some(0), "{v}");
    v["pools"][0]["count"].as_u64().unwrap_or(0)
}

// Issue 12.6: a second host on a data directory in use is refused before it binds anything,
// naming the process that holds it; after the first stops, the directory is free again.
#[test]
fn a_second_host_on_one_data_dir_is_refused_with_the_holder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("host");
    let mut first = HostProcess::start_dev(bin(), &dir, &[]);
    let out = tally(
        bin(),
        &[
            "host",
            "run",
            "--dev",
            "--data-dir",
            s(&dir),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("another host is running"), "{text}");
    assert!(text.contains(&first.pid().to_string()), "{text}");
    assert!(first.is_running(), "the first host is untouched");
    first.terminate(Duration::from_secs(10));
    let again = HostProcess::start_dev(bin(), &dir, &[]);
    drop(again);
}

/// Mounts a tmpfs of `kib` KiB at `dir`, or says why not (then the test is skipped: the issue
/// asks for it "where the machine allows a small tmpfs").
fn mount_tmpfs(dir: &Path, kib: u32) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let out = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={kib}k"),
            "tmpfs",
            s(dir),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

/// Writes until the file system is full; returns the filler's path.
fn fill(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0x5a_u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

// Issue 12.4 and X3 on one machine: with the data directory on a small tmpfs that is then
// filled, new clients get a signed storage_failure, the host stays up and nothing is counted;
// once space returns, the next new client gets the count of the machines actually stored
// (no phantom counts), without a restart.
#[test]
fn a_full_disk_counts_nothing_and_heals_by_itself() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    if let Err(why) = mount_tmpfs(&dir, 4096) {
        // A machine without mount rights (an unprivileged container) cannot run this one.
        eprintln!(
            "SKIP: a_full_disk_counts_nothing_and_heals_by_itself: cannot mount a tmpfs ({why})"
        );
        return;
    }
    let _unmount = Unmount(&dir);
    let mut host = HostProcess::start_dev(bin(), &dir, &[]);
    for n in 1..=3u64 {
        let (code, v) = activate(tmp.path(), &format!("pc{n}"), &host);
        assert_eq!((code, v["count"].as_u64()), (Some(2), Some(n)), "{v}");
    }
    let filler = fill(&dir);
    let mut refused = 0;
    for n in 4..=7 {
        let (code, v) = activate(tmp.path(), &format!("pc{n}"), &host);
        if v["result"] == "storage_failure" {
            assert_eq!(code, Some(1), "{v}");
            refused += 1;
        }
    }
    assert!(
        refused >= 3,
        "a full disk refuses new machines ({refused} of 4)"
    );
    assert!(host.is_running(), "the host stays up on a full disk");
    std::fs::remove_file(&filler).expect("free space");
    // The next new machine: the stored machines plus itself, below the server threshold of 5.
    let stored = 3 + (4 - refused);
    let (code, v) = activate(tmp.path(), "pc8", &host);
    assert_eq!(
        (code, v["count"].as_u64()),
        (Some(if stored + 1 >= 5 { 0 } else { 2 }), Some(stored + 1)),
        "no phantom counts after the disk was full: {v}"
    );
    assert_eq!(pool_count(&dir), stored + 1);
    host.terminate(Duration::from_secs(10));
}

// Issue 12.5: a database the host's user cannot write is refused at start with the path and
// the fix, before "started"; once permissions are fixed the host starts. Runs the host as
// another user (setpriv), since root may write anything.
#[test]
fn an_unwritable_database_is_refused_before_started() {
    let Ok(setpriv) = which("setpriv") else {
        assert!(!in_ci(), "setpriv is missing: .ci/run installs util-linux");
        eprintln!("SKIP: an_unwritable_database_is_refused_before_started: no setpriv");
        return;
    };
    if !is_root() {
        eprintln!(
            "SKIP: an_unwritable_database_is_refused_before_started: needs root to run as another user"
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    set_mode(tmp.path(), 0o755);
    let dir = tmp.path().join("data");
    let mut host = HostProcess::start_dev(bin(), &dir, &[]);
    host.terminate(Duration::from_secs(10));
    chown_tree(&dir, 65534);
    set_mode(&dir.join("tally.db"), 0o444);
    set_mode(&dir, 0o555);
    let run = |setpriv: &Path| {
        Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin())
            .args([
                "host",
                "run",
                "--data-dir",
                s(&dir),
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .env("HOME", s(tmp.path()))
            .env_remove("RUST_LOG")
            .output()
            .expect("run tally")
    };
    // The lock file cannot be created in a read-only directory either; both say what to fix.
    let out = run(&setpriv);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "refused before listening"
    );
    assert!(text.contains(s(&dir)), "names the path: {text}");
    // Directory writable again, database still read-only: the store refuses it with the fix.
    set_mode(&dir, 0o755);
    let out = run(&setpriv);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("read-only"), "{text}");
    assert!(text.contains("tally.db"), "{text}");
}

// Issue 12.5: an empty database file where one existed is warned about; `tally host check`
// reads the database in full and says it is sound.
#[test]
fn an_empty_database_is_warned_about_and_check_reads_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut host = HostProcess::start_dev(bin(), &dir, &[]);
    host.terminate(Duration::from_secs(10));
    let (code, v) = tally_json(bin(), &["host", "check", "--data-dir", s(&dir), "--json"]);
    assert_eq!((code, v["ok"].as_bool()), (Some(0), Some(true)), "{v}");
    for f in ["tally.db-wal", "tally.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    std::fs::File::create(dir.join("tally.db")).expect("truncate");
    let mut host = HostProcess::start_dev(bin(), &dir, &[]);
    assert!(
        host.wait_for_log("the database file is empty", Duration::from_secs(5)),
        "{}",
        host.stderr()
    );
    host.terminate(Duration::from_secs(10));
}

fn which(tool: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(tool))
                .find(|p| p.is_file())
        })
        .ok_or(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown_tree(path: &Path, uid: u32) {
    let status = Command::new("chown")
        .args(["-R", &format!("{uid}:{uid}"), s(path)])
        .status()
        .expect("chown");
    assert!(status.success());
}

// Issue 22.8, R26: a setting changed live wins over the flags at the next start, and the host
// says so at start (the setting, both values, the file), so `--listen` is not silently ignored.
#[test]
fn a_live_setting_that_overrides_a_flag_is_named_at_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("host");
    let mut first = HostProcess::start_dev(bin(), &dir, &[]);
    let out = tally(
        bin(),
        &[
            "host",
            "set",
            "--data-dir",
            s(&dir),
            "--activation-interval",
            "90s",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    first.terminate(Duration::from_secs(10));
    let again = HostProcess::start_dev(bin(), &dir, &["--activation-interval", "2h"]);
    assert!(
        again.wait_for_log(
            "a setting changed live overrides the config file and flags",
            Duration::from_secs(10)
        ),
        "no warning at start:\n{}",
        again.stderr()
    );
    let log = again.stderr();
    assert!(log.contains("activation_interval_secs"), "{log}");
    assert!(log.contains("settings.json"), "{log}");
    // The same start without a flag the file overrides says nothing of it.
    drop(again);
    std::fs::remove_file(dir.join("settings.json")).expect("remove settings.json");
    let plain = HostProcess::start_dev(bin(), &dir, &[]);
    assert!(
        !plain.stderr().contains("overrides the config file"),
        "{}",
        plain.stderr()
    );
}
