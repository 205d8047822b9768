//! Issue 21 part 6, the fleet as an admin runs it, with real processes and a real PostgreSQL
//! that asks for a password (SCRAM, as a stock Debian cluster does):
//!
//! - a data directory remembers its database: a host started with `--database URL` records the
//!   URL without its password (`database.url`) and the password apart (`database.password`,
//!   0600); `tally host status` on that directory then finds the fleet with no variable, and a
//!   restart without `--database` runs on it too; the password is never printed;
//! - an authority directory remembers its database the same way (`tally authority run`);
//! - a wrong or a missing password is one error line, printed once, that says "password" and
//!   names what to fix (the password file, or the URL given with --database).

use std::path::Path;
use std::time::Duration;

use tally_test_support::postgres::PgServer;
use tally_test_support::{HostProcess, tally, tally_json};

use crate::bin;

/// A server edition (threshold 5) of the demo catalog.
const SERVER_WEB: &str = "FW777-M677J-W8KJV-QG4VJ-HC6WP";
const PASSWORD: &str = "Corr3ct-h0rse";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn activate(host: &HostProcess, root: &Path, name: &str) -> serde_json::Value {
    activate_code(host, root, name).1
}

/// Activates machine `name` at `host`: the exit code (0 activated, 2 below the threshold) and
/// the JSON answer.
fn activate_code(host: &HostProcess, root: &Path, name: &str) -> (Option<i32>, serde_json::Value) {
    let state = root.join(name);
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
    tally_json(
        bin(),
        &[
            "client",
            "--state-dir",
            s(&state),
            "--trust",
            s(&host.data_dir.join("authority.pub")),
            "--json",
            "activate",
            "--host",
            &host.addr.to_string(),
            "--machine-name",
            name,
        ],
    )
}

/// `tally host status --data-dir DIR --json` with no database flag or variable.
fn status(dir: &Path) -> (Option<i32>, serde_json::Value) {
    tally_json(bin(), &["host", "status", "--data-dir", s(dir), "--json"])
}

fn stderr_of(args: &[&str]) -> String {
    let out = tally(bin(), args);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// A host started once with the URL: every later command on its data directory finds the fleet
// without the variable; the password is kept 0600 and never shown.
#[test]
fn a_data_directory_remembers_its_database_and_keeps_the_password_apart() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let bare = pg.create_password_role("tally", PASSWORD, "fleet");
    let url = bare.replacen("tally@", &format!("tally:{PASSWORD}@"), 1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("host1");

    let mut host = HostProcess::start_dev(bin(), &dir, &["--database", &url]);
    let v = activate(&host, tmp.path(), "pc1");
    assert_eq!(v["count"].as_u64(), Some(1), "{v}");

    // The files: the URL without the password, the password alone and private.
    let remembered = std::fs::read_to_string(dir.join("database.url")).expect("database.url");
    assert_eq!(remembered.trim(), bare);
    let pw = std::fs::read_to_string(dir.join("database.password")).expect("password file");
    assert_eq!(pw.trim_end(), PASSWORD);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("database.password"))
            .expect("meta")
            .permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600);

    // `tally host status` on the running host's directory: the fleet, no variable.
    let (code, v) = status(&dir);
    assert_eq!(code, Some(0), "{v}");
    assert!(
        v["database"]
            .as_str()
            .is_some_and(|d| d.contains("PostgreSQL")),
        "{v}"
    );
    assert!(!v.to_string().contains(PASSWORD), "{v}");
    let (code, v) = tally_json(bin(), &["host", "clients", "--data-dir", s(&dir), "--json"]);
    assert_eq!(code, Some(0), "{v}");
    assert!(v.to_string().contains("pc1"), "{v}");

    // A restart without --database runs on the fleet: the count goes on.
    assert!(host.terminate(Duration::from_secs(20)).is_some());
    assert!(!host.stderr().contains(PASSWORD), "never logged");
    let host = HostProcess::start_dev(bin(), &dir, &[]);
    let v = activate(&host, tmp.path(), "pc2");
    assert_eq!(v["count"].as_u64(), Some(2), "{v}");
    assert_eq!(
        pg.psql("fleet", "SELECT count(*) FROM registry"),
        "2",
        "both machines are in the fleet's registry"
    );
    // A URL given without its password names the remembered database: its password is used.
    let (code, v) = tally_json(
        bin(),
        &[
            "host",
            "status",
            "--data-dir",
            s(&dir),
            "--database",
            &bare,
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{v}");
    // `sqlite` names the embedded file explicitly, whatever is remembered.
    let out = tally(
        bin(),
        &[
            "host",
            "status",
            "--data-dir",
            s(&dir),
            "--database",
            "sqlite",
        ],
    );
    assert!(
        !out.status.success(),
        "no embedded database in a fleet host's dir"
    );
    drop(host);

    // A wrong password in the file: one line, says "password", names the file, printed once.
    std::fs::write(dir.join("database.password"), "wrong\n").expect("write");
    let text = stderr_of(&["host", "status", "--data-dir", s(&dir)]);
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    assert!(text.contains("wrong password"), "{text}");
    assert!(text.contains(s(&dir.join("database.password"))), "{text}");
    assert_eq!(
        text.matches("password authentication failed").count(),
        0,
        "{text}"
    );
    assert_eq!(
        text.matches("refused the password").count(),
        1,
        "once: {text}"
    );

    // A wrong password in the URL itself.
    let bad = bare.replacen("tally@", "tally:Nope@", 1);
    let text = stderr_of(&["host", "status", "--data-dir", s(&dir), "--database", &bad]);
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    assert!(text.contains("wrong password"), "{text}");
    assert!(text.contains("--database"), "{text}");
    assert!(!text.contains("Nope"), "{text}");

    // No password at all (a fresh directory, the URL without one).
    let fresh = tmp.path().join("host2");
    let text = stderr_of(&[
        "host",
        "run",
        "--dev",
        "--data-dir",
        s(&fresh),
        "--database",
        &bare,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("password")).collect();
    assert_eq!(errors.len(), 1, "said once: {text}");
    assert!(
        errors[0].contains("asks for a password and none was given"),
        "{text}"
    );
    assert!(errors[0].contains("TALLY_DATABASE_URL"), "{text}");
    assert!(
        !fresh.join("database.url").exists(),
        "a failed start records nothing"
    );
}

// An authority run on PostgreSQL remembers its database: later commands on its directory
// issue keys into PostgreSQL without --database.
#[test]
fn an_authority_directory_remembers_its_database() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let bare = pg.create_password_role("vendor", PASSWORD, "authority");
    let url = bare.replacen("vendor@", &format!("vendor:{PASSWORD}@"), 1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let authority =
        tally_test_support::authority::AuthorityDir::init(bin(), tmp.path().join("vendor"));
    let dir = authority.dir.clone();
    let (mut run, _) = authority.on_database(&url).run();
    assert_eq!(
        std::fs::read_to_string(dir.join("database.url"))
            .expect("database.url")
            .trim(),
        bare
    );
    assert!(run.terminate(Duration::from_secs(20)).is_some());
    assert!(!run.stderr().contains(PASSWORD));
    let out = tally(
        bin(),
        &[
            "authority",
            "issue-host-key",
            "--dir",
            s(&dir),
            "--group",
            "client-vl",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        pg.psql("authority", "SELECT count(*) FROM authority_keys"),
        "1",
        "the key went to PostgreSQL"
    );
    assert!(!dir.join("authority.db").exists(), "no SQLite file made");

    // A root rollover shares the remembered database with the new directory (nothing copied),
    // which remembers it too.
    let new_dir = tmp.path().join("vendor2");
    let out = tally(
        bin(),
        &[
            "authority",
            "rollover",
            "--dir",
            s(&dir),
            "--new-dir",
            s(&new_dir),
            "--out",
            s(&tmp.path().join("rollover.tally")),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(!new_dir.join("authority.db").exists(), "nothing copied");
    let out = tally(
        bin(),
        &[
            "authority",
            "issue-host-key",
            "--dir",
            s(&new_dir),
            "--group",
            "client-vl",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        pg.psql("authority", "SELECT count(*) FROM authority_keys"),
        "2",
        "the new root's authority issues into the shared database"
    );

    std::fs::write(dir.join("database.password"), "wrong\n").expect("write");
    let text = stderr_of(&[
        "authority",
        "issue-host-key",
        "--dir",
        s(&dir),
        "--group",
        "client-vl",
    ]);
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    assert!(text.contains("wrong password"), "{text}");
    assert!(text.contains(s(&dir.join("database.password"))), "{text}");
}

// `tally host migrate --to URL`: a single host counted 3 machines of a 5-threshold edition; it
// is refused while the host runs; after the move the host restarts on the fleet database (the
// data directory remembers it) and the count goes on: the 5th machine, counting the three from
// before the move, activates. A second host with machines of the same pool is refused with a
// clear error and nothing moved.
#[test]
fn migrate_moves_a_single_host_into_a_fleet_and_the_count_goes_on() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    let bare = pg.create_password_role("tally", PASSWORD, "fleet");
    let url = bare.replacen("tally@", &format!("tally:{PASSWORD}@"), 1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("single");
    let mut host = HostProcess::start_dev(bin(), &dir, &[]);
    for n in 1..=3 {
        let (code, v) = activate_code(&host, tmp.path(), &format!("pc{n}"));
        assert_eq!((code, v["count"].as_u64()), (Some(2), Some(n)), "{v}");
    }
    let migrate = |d: &Path| {
        tally(
            bin(),
            &[
                "host",
                "migrate",
                "--data-dir",
                s(d),
                "--to",
                &url,
                "--host-name",
                "single",
                "--json",
            ],
        )
    };
    let out = migrate(&dir);
    assert_eq!(out.status.code(), Some(1), "refused while the host runs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("another host is running"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(host.terminate(Duration::from_secs(20)).is_some());

    let out = migrate(&dir);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["moved"]["registry"].as_u64(), Some(3), "{v}");
    assert_eq!(v["moved"]["pool_entries"].as_u64(), Some(3), "{v}");
    assert!(v["moved"]["events"].as_u64().is_some_and(|n| n >= 3), "{v}");
    assert!(!v.to_string().contains(PASSWORD), "{v}");
    assert_eq!(
        pg.psql(
            "fleet",
            "SELECT count(*) FROM registry WHERE served_by = 'single'"
        ),
        "3"
    );

    // Restarted with no --database: on the fleet, counting on.
    let host = HostProcess::start_dev(bin(), &dir, &[]);
    let (code, v) = activate_code(&host, tmp.path(), "pc4");
    assert_eq!((code, v["count"].as_u64()), (Some(2), Some(4)), "{v}");
    let (code, v) = activate_code(&host, tmp.path(), "pc5");
    assert_eq!(
        (code, v["count"].as_u64()),
        (Some(0), Some(5)),
        "the 5th machine activates: {v}"
    );
    assert_eq!(pg.psql("fleet", "SELECT count(*) FROM registry"), "5");

    // Another single host with a machine of the same pool: refused, nothing moved.
    let other = tmp.path().join("other");
    let mut second = HostProcess::start_dev(bin(), &other, &[]);
    let (code, _) = activate_code(&second, tmp.path(), "px1");
    assert_eq!(code, Some(2));
    assert!(second.terminate(Duration::from_secs(20)).is_some());
    let out = migrate(&other);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("already counts machines in pool"), "{text}");
    assert!(text.contains("nothing was moved"), "{text}");
    assert_eq!(pg.psql("fleet", "SELECT count(*) FROM registry"), "5");
    assert!(!other.join("database.url").exists());
}

// Issue 21 part 3, as a process: with `--require-sync-replication` a host on a primary without
// a synchronous standby refuses to start, says why and what to do, and records nothing in its
// data directory; without the option the same host starts.
#[test]
fn a_host_that_requires_sync_replication_refuses_a_primary_without_a_standby() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    pg.create_database("fleet");
    let url = pg.url("fleet");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("host");
    let out = tally(
        bin(),
        &[
            "host",
            "run",
            "--dev",
            "--data-dir",
            s(&dir),
            "--database",
            &url,
            "--require-sync-replication",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let error: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{text}");
    assert!(error[0].contains("require_sync_replication"), "{text}");
    assert!(error[0].contains("synchronous standby"), "{text}");
    assert!(
        !dir.join("database.url").exists(),
        "a refused start records nothing"
    );
    let host = HostProcess::start_dev(bin(), &dir, &["--database", &url]);
    assert!(host.addr.port() > 0);
}

// Issue 21 part 2, what follows an unknown outcome: a commit sent while the synchronous standby
// is gone waits for it, so its batch's outcome is unknown and its client gets no answer. Once the
// standby is back the commit completes; the host checks the batch's token again by itself and
// logs, once, that the batch committed after all, and the machine is in the registry.
#[test]
fn an_unknown_outcome_is_checked_again_and_its_final_outcome_logged() {
    let Some(pg) = PgServer::start() else {
        return;
    };
    pg.create_database("fleet");
    let standby = pg.start_standby();
    pg.make_synchronous();
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_dev(
        bin(),
        &tmp.path().join("host"),
        &["--database", &pg.url("fleet")],
    );
    let v = activate(&host, tmp.path(), "pc1");
    assert_eq!(v["count"].as_u64(), Some(1), "{v}");
    standby.stop_immediate();
    let (_, v) = activate_code(&host, tmp.path(), "pc2");
    assert!(
        v["count"].as_u64().is_none(),
        "no count without the standby: {v}"
    );
    assert_eq!(
        pg.psql(
            "fleet",
            "SELECT count(*) FROM registry WHERE machine_name = 'pc2'"
        ),
        "0",
        "not committed while the standby is gone"
    );
    standby.restart();
    pg.make_synchronous();
    assert!(
        host.wait_for_log(
            "a batch whose outcome was unknown committed after all",
            Duration::from_secs(60)
        ),
        "{}",
        host.stderr()
    );
    assert_eq!(
        host.stderr()
            .matches("a batch whose outcome was unknown committed after all")
            .count(),
        1
    );
    assert_eq!(
        pg.psql(
            "fleet",
            "SELECT count(*) FROM registry WHERE machine_name = 'pc2'"
        ),
        "1"
    );
}
