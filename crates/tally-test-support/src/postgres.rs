//! A real, throwaway PostgreSQL server for tests: `initdb` into a temporary directory (as the
//! `postgres` user when we run as root, since `initdb` refuses root), listening on 127.0.0.1 on
//! a free port with its socket in that directory, trust authentication, started with
//! `pg_ctl -w start`. A streaming standby can be cloned from it (`pg_basebackup -R -X stream`)
//! and promoted. Dropping a server stops it (`-m immediate`) and deletes its directory.
//!
//! ```no_run
//! use tally_test_support::postgres::PgServer;
//! let Some(primary) = PgServer::start() else { return }; // skipped outside CI
//! primary.create_database("tally");
//! let standby = primary.start_standby();
//! let url = PgServer::failover_url(&[&primary, &standby], "tally");
//! primary.stop_immediate();
//! standby.promote();
//! // a client on `url` now lands on the standby
//! # drop(url);
//! ```

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::test_name;

pub mod password;
pub mod tls;

/// How long starting, stopping or promoting a server may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// The PostgreSQL tools, found in `/usr/lib/postgresql/N/bin` (Debian; newest N) or on `PATH`.
#[derive(Clone, Debug)]
struct Tools {
    bin: Option<PathBuf>,
}

impl Tools {
    fn find() -> Option<Self> {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").is_file().then_some((n, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Some(Self { bin: Some(bin) });
        }
        let on_path = Command::new("initdb")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        on_path.then_some(Self { bin: None })
    }

    fn path(&self, tool: &str) -> PathBuf {
        match &self.bin {
            Some(bin) if bin.join(tool).is_file() => bin.join(tool),
            _ => PathBuf::from(tool),
        }
    }

    /// `tool` as the `postgres` user when we are root (PostgreSQL refuses to run as root),
    /// inside network namespace `ns` when given.
    fn as_postgres(&self, tool: &str, ns: Option<&str>) -> Command {
        if running_as_root() {
            let mut c = in_netns(ns, "runuser");
            c.args(["-u", "postgres", "--"]).arg(self.path(tool));
            c
        } else {
            in_netns(ns, self.path(tool))
        }
    }
}

/// `program`, inside network namespace `ns` when given.
fn in_netns(ns: Option<&str>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The uid and gid of the `postgres` user.
fn postgres_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

fn free_port() -> u16 {
    for _ in 0..50 {
        if let Ok(l) = TcpListener::bind("127.0.0.1:0")
            && let Ok(a) = l.local_addr()
        {
            return a.port();
        }
    }
    panic!("no free port for PostgreSQL");
}

fn run(mut cmd: Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A directory the `postgres` user owns (we may be root).
fn owned_temp_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("tally-pg-")
        .tempdir()
        .unwrap_or_else(|e| panic!("tempdir: {e}"));
    if running_as_root() {
        let (uid, gid) = postgres_ids().unwrap_or_else(|| panic!("no `postgres` user"));
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", dir.path().display()));
    }
    dir
}

/// A running PostgreSQL server (primary or standby), stopped and deleted when dropped.
pub struct PgServer {
    tools: Tools,
    dir: tempfile::TempDir,
    port: u16,
    stopped: AtomicBool,
    /// The network namespace it runs in and its address there ([`PgServer::start_on`]).
    ns: Option<(String, Ipv4Addr)>,
}

impl std::fmt::Debug for PgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgServer")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl PgServer {
    /// Starts a fresh server, or returns `None` after printing `SKIP: <test>: <why>` on stderr
    /// when PostgreSQL is not installed and we are not in CI. In CI a missing PostgreSQL fails
    /// the test (`.ci/run` installs it).
    pub fn start() -> Option<Self> {
        Self::start_in(None)
    }

    /// As [`PgServer::start`], inside `machine`'s network namespace
    /// ([`crate::netns::NetLab::machine`]), listening on its address (and its own 127.0.0.1)
    /// and trusting the lab's /24. [`PgServer::addr`] and [`PgServer::url`] name that address.
    pub fn start_on(machine: &crate::netns::Machine) -> Option<Self> {
        Self::start_in(Some((machine.netns.clone(), machine.addr)))
    }

    fn start_in(ns: Option<(String, Ipv4Addr)>) -> Option<Self> {
        let Some(tools) = Tools::find() else {
            crate::skip(
                &test_name(),
                "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH); `apt-get install postgresql`",
            );
            return None;
        };
        if running_as_root() && postgres_ids().is_none() {
            crate::skip(
                &test_name(),
                "running as root and there is no `postgres` user for initdb",
            );
            return None;
        }
        let dir = owned_temp_dir();
        let data = dir.path().join("data");
        let mut initdb = tools.as_postgres("initdb", None);
        initdb
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data);
        run(initdb, "initdb");
        let port = free_port();
        let listen = match &ns {
            Some((_, addr)) => format!("127.0.0.1,{addr}"),
            None => "127.0.0.1".to_owned(),
        };
        let conf = format!(
            "\n# tally-test-support\nlisten_addresses = '{listen}'\nport = {port}\n\
             unix_socket_directories = '{}'\nfsync = off\nfull_page_writes = off\n\
             max_connections = 200\nwal_level = replica\nmax_wal_senders = 5\n",
            dir.path().display()
        );
        append(&data.join("postgresql.conf"), &conf);
        if let Some((_, addr)) = &ns {
            let o = addr.octets();
            append(
                &data.join("pg_hba.conf"),
                &format!("host all all {}.{}.{}.0/24 trust\n", o[0], o[1], o[2]),
            );
        }
        let server = Self {
            tools,
            dir,
            port,
            stopped: AtomicBool::new(true),
            ns,
        };
        server.pg_ctl_start();
        Some(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn netns(&self) -> Option<&str> {
        self.ns.as_ref().map(|(n, _)| n.as_str())
    }

    /// The address it listens on for others: 127.0.0.1, or its namespace's address.
    fn ip(&self) -> Ipv4Addr {
        self.ns.as_ref().map_or(Ipv4Addr::LOCALHOST, |(_, a)| *a)
    }

    fn pg_ctl_start(&self) {
        let mut c = self.tools.as_postgres("pg_ctl", self.netns());
        c.args(["-w", "-t", "60", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .arg("start")
            .stdout(Stdio::null());
        let out = c
            .output()
            .unwrap_or_else(|e| panic!("cannot run pg_ctl: {e}"));
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        self.stopped.store(false, Ordering::SeqCst);
        self.wait_accepting();
    }

    /// Polls until the server accepts TCP connections and `pg_isready` says so.
    fn wait_accepting(&self) {
        let deadline = Instant::now() + DEADLINE;
        let addr = SocketAddr::from((self.ip(), self.port));
        loop {
            let tcp = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            if tcp
                && in_netns(self.netns(), self.tools.path("pg_isready"))
                    .args([
                        "-q",
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &self.port.to_string(),
                        "-t",
                        "1",
                    ])
                    .status()
                    .is_ok_and(|s| s.success())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL on port {} did not accept connections within {DEADLINE:?}; log:\n{}",
                self.port,
                self.log()
            );
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT` (in a namespace: its address there).
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip(), self.port)
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB` (in a namespace: its address there).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@{}:{}/{db}", self.ip(), self.port)
    }

    /// A URL over several servers that connects to whichever is read-write:
    /// `postgres://postgres@127.0.0.1:P1,127.0.0.1:P2/DB?target_session_attrs=read-write`.
    pub fn failover_url(servers: &[&PgServer], db: &str) -> String {
        let hosts: Vec<String> = servers.iter().map(|s| s.addr()).collect();
        format!(
            "postgres://postgres@{}/{db}?target_session_attrs=read-write",
            hosts.join(",")
        )
    }

    /// Runs one SQL command with `psql` on database `db`; returns its unaligned output.
    /// Panics (with psql's message) if it fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = run(self.psql_command(db, sql), &format!("psql {sql:?}"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// As [`PgServer::psql`], `None` when the command fails (to poll a standby, say).
    pub fn try_psql(&self, db: &str, sql: &str) -> Option<String> {
        let out = self.psql_command(db, sql).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn psql_command(&self, db: &str, sql: &str) -> Command {
        let mut c = in_netns(self.netns(), self.tools.path("psql"));
        c.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            sql,
        ]);
        c
    }

    /// Creates database `name` (a plain identifier).
    pub fn create_database(&self, name: &str) {
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database name {name:?}: letters, digits and _ only"
        );
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: no shutdown checkpoint, like a
    /// crash). Safe to call twice.
    pub fn stop_immediate(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut c = self.tools.as_postgres("pg_ctl", self.netns());
        c.args(["-w", "-t", "60", "-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = c.status();
    }

    /// Kills the postmaster with SIGKILL (its children exit on their own).
    pub fn kill(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let pid = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned));
        if let Some(pid) = pid {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        // Orphaned backends exit when they notice; make sure the port is free before returning.
        let deadline = Instant::now() + DEADLINE;
        let addr = SocketAddr::from((self.ip(), self.port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Starts the server again after [`PgServer::stop_immediate`] or [`PgServer::kill`].
    pub fn restart(&self) {
        self.stop_immediate();
        self.pg_ctl_start();
    }

    /// Clones this server into a streaming standby on a free port and starts it
    /// (`pg_basebackup -R -X stream`); it answers read-only queries until promoted.
    pub fn start_standby(&self) -> PgServer {
        let dir = owned_temp_dir();
        let data = dir.path().join("data");
        let mut c = self.tools.as_postgres("pg_basebackup", self.netns());
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            // An immediate checkpoint: the default spreads it over minutes.
            "--checkpoint=fast",
            "--no-sync",
            "-D",
        ])
        .arg(&data);
        run(c, "pg_basebackup");
        let port = free_port();
        append(
            &data.join("postgresql.conf"),
            &format!(
                "\n# standby\nport = {port}\nunix_socket_directories = '{}'\n",
                dir.path().display()
            ),
        );
        let standby = PgServer {
            tools: self.tools.clone(),
            dir,
            port,
            stopped: AtomicBool::new(true),
            // In a namespace the standby runs beside its primary (same address, its own port).
            ns: self.ns.clone(),
        };
        standby.pg_ctl_start();
        standby
    }

    /// Makes this primary wait for its standby before a commit returns
    /// (`synchronous_standby_names = '*'`), and waits until the standby is in sync: then a
    /// failover loses no acknowledged commit. (With asynchronous replication the last commits
    /// may not have reached the standby when the primary dies.)
    pub fn make_synchronous(&self) {
        self.psql(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
        );
        self.psql("postgres", "SELECT pg_reload_conf()");
        let deadline = Instant::now() + DEADLINE;
        while self.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
        ) != "1"
        {
            assert!(Instant::now() < deadline, "standby not in sync in time");
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Whether the server is a standby (`pg_is_in_recovery()`).
    pub fn in_recovery(&self) -> bool {
        self.psql("postgres", "SELECT pg_is_in_recovery()") == "t"
    }

    /// Promotes a standby to primary and waits until it accepts writes.
    pub fn promote(&self) {
        let mut c = self.tools.as_postgres("pg_ctl", self.netns());
        c.args(["-w", "-t", "60", "-D"])
            .arg(self.data())
            .arg("promote")
            .stdout(Stdio::null());
        run(c, "pg_ctl promote");
        let deadline = Instant::now() + DEADLINE;
        while self.in_recovery() {
            assert!(Instant::now() < deadline, "standby not promoted in time");
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The server's directory (data in `data/`, log in `server.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop_immediate();
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    // The harness itself: a server starts, takes a database, clones into a standby that is
    // promoted after the primary dies, and the failover URL names both.
    #[test]
    fn primary_standby_promote() {
        let Some(primary) = PgServer::start() else {
            return;
        };
        primary.create_database("t");
        primary.psql("t", "CREATE TABLE x (v INT); INSERT INTO x VALUES (7)");
        let standby = primary.start_standby();
        assert!(standby.in_recovery());
        assert!(!primary.in_recovery());
        let url = PgServer::failover_url(&[&primary, &standby], "t");
        assert_eq!(
            url,
            format!(
                "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/t?target_session_attrs=read-write",
                primary.port(),
                standby.port()
            )
        );
        // The standby has the row once replay caught up; poll, do not sleep blindly.
        let deadline = Instant::now() + DEADLINE;
        while standby.try_psql("t", "SELECT count(*) FROM x").as_deref() != Some("1") {
            assert!(Instant::now() < deadline, "standby did not replay");
            thread::sleep(Duration::from_millis(25));
        }
        primary.stop_immediate();
        standby.promote();
        assert!(!standby.in_recovery());
        standby.psql("t", "INSERT INTO x VALUES (8)");
        assert_eq!(standby.psql("t", "SELECT sum(v) FROM x"), "15");
        let dir = primary.dir().to_owned();
        drop(primary);
        assert!(!dir.exists(), "dropped server's directory is removed");
    }
}
