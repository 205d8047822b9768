//! Issue 19, part 4 (X4, R13) with real processes: a local user without rights cannot lock,
//! read or replace what the license rests on, nor crowd root out of the agent socket; and
//! everything Tally creates has its own mode, also when started under `umask 000`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_test_support::{HostProcess, Process, in_ci, skip, tally, wait_until};

use crate::bin;

const SERVER_WEB: &str = "FW777-M677J-W8KJV-QG4VJ-HC6WP";
const NOBODY: u32 = 65534;
const SETPRIV: &str = "/usr/bin/setpriv";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Whether this test can act as another user; skips (visibly) otherwise.
fn can_switch_user(test: &str) -> bool {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if Path::new(SETPRIV).exists() && root {
        return true;
    }
    assert!(
        !in_ci(),
        "CI must run this test as root with setpriv (util-linux) installed"
    );
    skip(
        test,
        "needs root and setpriv to act as an unprivileged user",
    );
    false
}

/// Runs `program args` as uid/gid 65534 with no supplementary groups.
fn as_nobody(program: &str, args: &[&str]) -> Output {
    Command::new(SETPRIV)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", program])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run setpriv")
}

/// A script that runs `tally` under `umask 000`: whatever the processes started through it
/// create must still get Tally's own modes (X4).
fn umask_000_tally(dir: &Path) -> PathBuf {
    let script = dir.join("tally-umask-000");
    std::fs::write(
        &script,
        format!("#!/bin/sh\numask 000\nexec '{}' \"$@\"\n", s(bin())),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

/// `n` connections to the Unix socket `path`, opened by a process running as uid 65534 and held
/// until it is dropped (it is killed then; it also ends by itself after two minutes).
struct IdleConnections(Child);

impl IdleConnections {
    #[allow(unsafe_code)]
    fn open(path: &Path, n: usize) -> Self {
        let mut addr: libc::sockaddr_un =
            // SAFETY: sockaddr_un is plain old data; all zeros is a valid (empty) value.
            unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = s(path).as_bytes();
        assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
        for (d, b) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *b as libc::c_char;
        }
        let mut cmd = Command::new("/bin/sleep");
        cmd.arg("120")
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: runs in the forked child, after the switch to uid 65534 and before exec; it
        // only makes system calls (no allocation, no locks). The descriptors are made without
        // close-on-exec, so `sleep` holds them; a connect waits at most 5 s (SO_SNDTIMEO).
        unsafe {
            cmd.pre_exec(move || {
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                }
                let timeout = libc::timeval {
                    tv_sec: 5,
                    tv_usec: 0,
                };
                for _ in 0..n {
                    let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_SNDTIMEO,
                        (&raw const timeout).cast(),
                        std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                    );
                    // A refused or timed-out connect is fine: the point is to try them all.
                    libc::connect(
                        fd,
                        (&raw const addr).cast(),
                        std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                    );
                }
                Ok(())
            });
        }
        Self(cmd.spawn().expect("spawn the idle connections"))
    }
}

impl Drop for IdleConnections {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Root's status through the agent, and how long it took.
fn root_status(dir: &Path) -> (Value, Duration) {
    let started = Instant::now();
    let out = tally(
        bin(),
        &["client", "--state-dir", s(dir), "--json", "status"],
    );
    let took = started.elapsed();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (v, took)
}

// X4, R13: a host, a client and its agent made under umask 000 have Tally's modes; then a local
// user without rights cannot hold the state lock, read the registry, replace the trust anchor,
// or delay root's status with 1,100 idle agent connections, and may still ask the agent.
#[test]
fn x4_local_users_cannot_lock_read_replace_or_crowd_out() {
    let _heavy = crate::heavy();
    if !can_switch_user("x4_local_users_cannot_lock_read_replace_or_crowd_out") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let tally0 = umask_000_tally(tmp.path());
    let host = HostProcess::start_dev(&tally0, &tmp.path().join("host"), &[]);
    let dir = tmp.path().join("c");
    let trust = host.data_dir.join("authority.pub");
    for args in [
        vec!["client", "--state-dir", s(&dir), "trust", s(&trust)],
        vec!["client", "--state-dir", s(&dir), "install-key", SERVER_WEB],
    ] {
        let out = tally(&tally0, &args);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let agent = Process::spawn(
        &tally0,
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
    let socket = dir.join("agent.sock");
    assert!(
        wait_until(Duration::from_secs(10), || socket.exists().then_some(())).is_some(),
        "{}",
        agent.stderr()
    );
    let (v, _) = root_status(&dir);
    assert!(v["status"].is_string(), "{v}");

    // Every mode, umask 000 notwithstanding: the client's directory is 0755 (others reach the
    // socket, R13) and written by its owner only; the host's directories are its own alone.
    let h = &host.data_dir;
    let dev = h.join("dev-authority");
    let mut expected: Vec<(PathBuf, u32)> = vec![
        (dir.clone(), 0o755),
        (dir.join("state.json"), 0o600),
        (dir.join("state.lock"), 0o600),
        (dir.join("authority.pub"), 0o644),
        (socket.clone(), 0o666),
        (h.clone(), 0o700),
        (h.join("host.key"), 0o600),
        (h.join("host.pub"), 0o644),
        (h.join("host.cert"), 0o644),
        (h.join("authority.pub"), 0o644),
        (h.join("tally.db"), 0o600),
        (h.join("admin.token"), 0o600),
        (h.join("admin.addr"), 0o600),
        (h.join("host.lock"), 0o600),
        (dev.clone(), 0o700),
        (dev.join("authority.key"), 0o600),
        (dev.join("authority.pub"), 0o644),
        (dev.join("operator.token"), 0o600),
    ];
    for side in ["tally.db-wal", "tally.db-shm"] {
        if h.join(side).exists() {
            expected.push((h.join(side), 0o600));
        }
    }
    for (path, want) in &expected {
        assert_eq!(mode(path), *want, "{}: {:o}", path.display(), mode(path));
    }
    // Nothing else was made writable by others anywhere.
    for root in [&dir, h] {
        for entry in walk(root) {
            let m = mode(&entry);
            assert!(
                m & 0o022 == 0 || entry == socket,
                "{} is {m:o}",
                entry.display()
            );
        }
    }

    // The state lock: a user who cannot write the state cannot open it, so cannot hold it.
    let out = as_nobody(
        "/usr/bin/flock",
        &["--exclusive", s(&dir.join("state.lock")), "true"],
    );
    assert!(!out.status.success(), "nobody took the state lock: {out:?}");
    // The registry: the host's database cannot be read (nor listed with tally).
    let out = as_nobody("/bin/cat", &[s(&h.join("tally.db"))]);
    assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
    let out = as_nobody(s(bin()), &["host", "clients", "--data-dir", s(h), "--json"]);
    assert!(!out.status.success(), "nobody listed the registry: {out:?}");
    // The trust anchor: neither overwritten, nor replaced by a rename, nor removed.
    let anchor = std::fs::read(dir.join("authority.pub")).expect("anchor");
    for script in [
        "echo forged > \"$1/authority.pub\"",
        "echo forged > \"$1/.authority.pub.tmp\" && mv \"$1/.authority.pub.tmp\" \"$1/authority.pub\"",
        "rm -f \"$1/authority.pub\"",
    ] {
        let out = as_nobody("/bin/sh", &["-c", script, "sh", s(&dir)]);
        assert!(!out.status.success(), "{script}: {out:?}");
    }
    assert_eq!(
        std::fs::read(dir.join("authority.pub")).expect("anchor"),
        anchor
    );
    // The state: unreadable to others; status through the agent works for them (R13).
    let out = as_nobody("/bin/cat", &[s(&dir.join("state.json"))]);
    assert!(!out.status.success(), "{out:?}");
    let out = as_nobody(
        s(bin()),
        &["client", "--state-dir", s(&dir), "--json", "status"],
    );
    assert!(out.status.success(), "{out:?}");

    // 1,100 idle connections from one user: over the per-user cap they are closed at once, so
    // root's status and activation are answered promptly.
    let idle = IdleConnections::open(&socket, 1_100);
    assert!(
        agent.wait_for_log("over the cap refused", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    let (v, took) = root_status(&dir);
    eprintln!("root's status with 1,100 idle connections held by another user: {took:?}");
    assert!(v["status"].is_string(), "{v}");
    assert!(took < Duration::from_secs(2), "root's status took {took:?}");
    let out = tally(
        bin(),
        &["client", "--state-dir", s(&dir), "--json", "activate"],
    );
    assert_eq!(out.status.code(), Some(2), "below threshold: {out:?}");
    drop(idle);
    // The refusal is logged once a minute for that user, not once per connection.
    assert_eq!(
        agent.stderr().matches("over the cap refused").count(),
        1,
        "{}",
        agent.stderr()
    );
}

// X4: an install an older Tally (or a loose umask) left open is tightened at start, with a
// warning naming the path and both modes; a lock file others could open is replaced.
#[test]
fn x4_loose_modes_are_tightened_at_start_with_a_warning() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    host.terminate(Duration::from_secs(10));
    let h = host.data_dir.clone();
    let dir = tmp.path().join("c");
    let out = tally(
        bin(),
        &["client", "--state-dir", s(&dir), "install-key", SERVER_WEB],
    );
    assert!(out.status.success(), "{out:?}");
    let loosen = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    std::fs::write(h.join("host-product.key"), "X\n").expect("old key file");
    for (p, m) in [
        (h.clone(), 0o777),
        (h.join("host-product.key"), 0o644),
        (h.join("tally.db"), 0o644),
        (h.join("host.key"), 0o666),
        (dir.clone(), 0o777),
        (dir.join("state.json"), 0o644),
        (dir.join("state.lock"), 0o666),
    ] {
        loosen(&p, m);
    }
    let lock_inode = inode(&dir.join("state.lock"));
    let host = HostProcess::start_dev(bin(), &h, &[]);
    assert!(
        host.wait_for_log("tightened", Duration::from_secs(5)),
        "{}",
        host.stderr()
    );
    let log = host.stderr();
    assert!(
        log.contains(s(&h.join("host-product.key"))) && log.contains("0644"),
        "{log}"
    );
    assert_eq!(mode(&h), 0o700);
    assert_eq!(mode(&h.join("host-product.key")), 0o600);
    assert_eq!(mode(&h.join("tally.db")), 0o600);
    assert_eq!(mode(&h.join("host.key")), 0o600);
    let agent = Process::spawn(bin(), &["agent", "run", "--state-dir", s(&dir)], &[]);
    assert!(
        agent.wait_for_log("agent started", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    let log = agent.stderr();
    assert!(log.contains("0777") && log.contains("0755"), "{log}");
    assert_eq!(mode(&dir), 0o755);
    assert_eq!(mode(&dir.join("state.json")), 0o600);
    assert_eq!(mode(&dir.join("state.lock")), 0o600);
    assert_ne!(inode(&dir.join("state.lock")), lock_inode, "lock replaced");
}

fn inode(p: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("meta"))
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir()
            && !std::fs::symlink_metadata(&out[i])
                .expect("meta")
                .file_type()
                .is_symlink()
        {
            let entries = std::fs::read_dir(&out[i]).expect("read_dir");
            out.extend(entries.map(|e| e.expect("entry").path()));
        }
        i += 1;
    }
    out
}
