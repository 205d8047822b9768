//! Test helpers shared by Tally's integration tests: run `tally` processes, find their
//! addresses, kill them (gracefully or with SIGKILL), and decide whether a missing external
//! tool skips a test or fails it (it fails when `CI` is set).

pub mod authority;
pub mod bind;
pub mod faketime;
pub mod netns;
pub mod postgres;
pub mod proxy;
pub mod softhsm;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Whether we run under CI (`CI` set and not `false`/`0`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Skips the running test because of `reason` (a missing tool, say).
///
/// Outside CI it prints `SKIP: <test>: <reason>` on stderr and appends the same line to the file
/// named by `TALLY_SKIP_LOG` (`.ci/run` sets it: cargo hides the stderr of passing tests, so
/// the file is how the closing summary counts skips). Under CI ([`in_ci`]) a skip is a failure:
/// it panics, because `.ci/run` installs every tool a test needs. The caller returns after it.
pub fn skip(test: &str, reason: &str) {
    assert!(
        !in_ci(),
        "{test}: {reason}; under CI nothing may be skipped (.ci/run installs what tests need)"
    );
    let line = format!("SKIP: {test}: {reason}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("TALLY_SKIP_LOG") {
        use std::io::Write;
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = appended {
            eprintln!(
                "cannot append to TALLY_SKIP_LOG {}: {e}",
                Path::new(&path).display()
            );
        }
    }
}

/// The running test's name, from its thread (the test harness names each test's thread).
pub fn test_name() -> String {
    thread::current()
        .name()
        .unwrap_or("unknown test")
        .to_owned()
}

/// A spawned `tally` process (an agent, say), killed when dropped; stderr is collected.
pub struct Process {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Process {
    /// Spawns `tally` with `args` and `envs`.
    pub fn spawn(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::spawn_reading(bin, args, envs, &[]).0
    }

    /// Spawns `tally` with `args` and waits (up to 20 s) for a stdout line starting with
    /// `prefix` followed by an address, e.g. `tally authority listening on `.
    pub fn spawn_listening(
        bin: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        prefix: &str,
    ) -> (Self, SocketAddr) {
        let (process, addrs) = Self::spawn_reading(bin, args, envs, &[prefix]);
        (process, addrs[0])
    }

    /// Spawns `tally` and waits (up to 20 s) until stdout has had one `PREFIX ADDRESS` line for
    /// each of `prefixes`; returns the addresses in the order of `prefixes`.
    pub fn spawn_reading(
        bin: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        prefixes: &[&str],
    ) -> (Self, Vec<SocketAddr>) {
        let mut cmd = Command::new(bin);
        cmd.args(args).envs(envs.iter().copied());
        Self::spawn_command(cmd, prefixes)
    }

    /// As [`Process::spawn_reading`], for a command built by the caller (run inside a network
    /// namespace, say: [`netns::Machine::command`]).
    pub fn spawn_command(mut cmd: Command, prefixes: &[&str]) -> (Self, Vec<SocketAddr>) {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .env_remove("RUST_LOG")
            .stdout(if prefixes.is_empty() {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stderr = collect_stderr(&mut child);
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            let wanted: Vec<String> = prefixes.iter().map(|p| (*p).to_owned()).collect();
            thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    for (i, prefix) in wanted.iter().enumerate() {
                        if let Some(addr) = line.strip_prefix(prefix.as_str()) {
                            let _ = tx.send((i, addr.trim().to_owned()));
                        }
                    }
                }
            });
        }
        let process = Self { child, stderr };
        let mut found: Vec<Option<SocketAddr>> = vec![None; prefixes.len()];
        while found.iter().any(Option::is_none) {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok((i, a)) => {
                    found[i] = Some(a.parse().unwrap_or_else(|e| panic!("bad address {a}: {e}")))
                }
                Err(_) => panic!(
                    "{what} did not start listening within 20 s; stderr:\n{}",
                    process.stderr()
                ),
            }
        }
        (process, found.into_iter().flatten().collect())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the process stops answering (its sockets still accept and buffer) until
    /// [`Process::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Process::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let ok = Command::new("kill")
            .args([which, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {which} {} failed", self.child.id());
    }

    /// SIGTERM, then waits up to `limit` for the exit.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits until the log contains `needle` (up to `limit`).
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collects the child's stderr lines into a shared string, from a background thread.
fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    if let Some(err) = child.stderr.take() {
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(PoisonError::into_inner);
                s.push_str(&line);
                s.push('\n');
            }
        });
    }
    log
}

/// Polls `f` every 50 ms until it returns `Some` or `limit` passes.
pub fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `tally` with `args` and waits for it.
pub fn tally(bin: &Path, args: &[&str]) -> Output {
    tally_env(bin, args, &[])
}

/// Runs `tally` with `args` and extra environment (a [`faketime::env`], say) and waits for it.
pub fn tally_env(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    match Command::new(bin)
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("RUST_LOG")
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("cannot run {}: {e}", bin.display()),
    }
}

/// Runs `tally` and parses its stdout as JSON; panics with stderr on bad JSON.
pub fn tally_json(bin: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    tally_json_env(bin, args, &[])
}

/// [`tally_json`] with extra environment (a [`faketime::env`], say).
pub fn tally_json_env(
    bin: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (Option<i32>, serde_json::Value) {
    let out = tally_env(bin, args, envs);
    let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tally {args:?} printed no JSON ({e}); stdout: {} stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), value)
}

/// A running `tally host run --dev` process (a [`Process`] with its addresses); killed when
/// dropped.
pub struct HostProcess {
    process: Process,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The admin API's address.
    pub admin: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
}

impl std::ops::Deref for HostProcess {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for HostProcess {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl HostProcess {
    /// Starts `tally host run --dev --listen 127.0.0.1:0 --data-dir DIR [extra…]` and waits
    /// until it listens.
    pub fn start_dev(bin: &Path, data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_on(bin, data_dir, "127.0.0.1:0", extra)
    }

    /// As [`HostProcess::start_dev`], on a given listen address. The admin API listens on a
    /// free loopback port.
    pub fn start_on(bin: &Path, data_dir: &Path, listen: &str, extra: &[&str]) -> Self {
        Self::start_env(bin, data_dir, listen, extra, &[])
    }

    /// As [`HostProcess::start_on`], with extra environment (a [`faketime::env`], say).
    pub fn start_env(
        bin: &Path,
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let dir = data_dir
            .to_str()
            .unwrap_or_else(|| panic!("non-UTF-8 path {}", data_dir.display()));
        let mut args = vec![
            "host",
            "run",
            "--dev",
            "--listen",
            listen,
            "--data-dir",
            dir,
            "--admin-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let (process, addrs) = Process::spawn_reading(
            bin,
            &args,
            envs,
            &["tally host listening on ", "tally admin listening on "],
        );
        Self {
            process,
            addr: addrs[0],
            admin: addrs[1],
            data_dir: data_dir.to_owned(),
        }
    }
}
