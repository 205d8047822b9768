//! A real authority for tests: `tally authority init` in a directory, keys issued with the CLI,
//! and `tally authority run` on a free loopback port, optionally on a PostgreSQL database.
//! The one place tests set an authority up, so a change of its commands changes one file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::{Process, tally, tally_json};

/// The line `tally authority run` prints first, followed by its address.
pub const LISTENING: &str = "tally authority listening on ";

/// An initialized authority directory.
#[derive(Clone, Debug)]
pub struct AuthorityDir {
    bin: PathBuf,
    /// The directory.
    pub dir: PathBuf,
    database: Option<String>,
}

impl AuthorityDir {
    /// Runs `tally authority init --dir DIR` (panics with its output if it fails).
    pub fn init(bin: &Path, dir: PathBuf) -> Self {
        let out = tally(bin, &["authority", "init", "--dir", &dir.to_string_lossy()]);
        assert!(out.status.success(), "authority init: {out:?}");
        Self {
            bin: bin.to_owned(),
            dir,
            database: None,
        }
    }

    /// An authority directory initialized before (by [`AuthorityDir::init`] or a test's own
    /// commands).
    pub fn at(bin: &Path, dir: &Path) -> Self {
        Self {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            database: None,
        }
    }

    /// Every later command passes `--database URL` (a fleet's authority on PostgreSQL).
    pub fn on_database(mut self, url: &str) -> Self {
        self.database = Some(url.to_owned());
        self
    }

    /// The operator token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("operator.token"))
            .map(|t| t.trim().to_owned())
            .unwrap_or_else(|e| panic!("operator token in {}: {e}", self.dir.display()))
    }

    /// The authority's public key file, which hosts and clients trust.
    pub fn trust(&self) -> PathBuf {
        self.dir.join("authority.pub")
    }

    fn args<'a>(&'a self, command: &'a str, dir: &'a str) -> Vec<&'a str> {
        let mut args = vec!["authority", command, "--dir", dir];
        if let Some(url) = &self.database {
            args.extend(["--database", url]);
        }
        args
    }

    /// `tally authority issue-host-key --group GROUP`: the key and its serial.
    pub fn issue_host_key(&self, group: &str) -> (String, u64) {
        let dir = self.dir.to_string_lossy();
        let mut args = self.args("issue-host-key", &dir);
        args.extend(["--group", group, "--json"]);
        let (code, v) = tally_json(&self.bin, &args);
        assert_eq!(code, Some(0), "issue-host-key: {v}");
        (
            v["key"]
                .as_str()
                .unwrap_or_else(|| panic!("issue-host-key gave no key: {v}"))
                .to_owned(),
            v["serial"]
                .as_u64()
                .unwrap_or_else(|| panic!("issue-host-key gave no serial: {v}")),
        )
    }

    /// `tally authority issue-mak --budget N`: the MAK.
    pub fn issue_mak(&self, budget: u32) -> String {
        let dir = self.dir.to_string_lossy();
        let budget = budget.to_string();
        let mut args = self.args("issue-mak", &dir);
        args.extend(["--budget", &budget, "--json"]);
        let (code, v) = tally_json(&self.bin, &args);
        assert_eq!(code, Some(0), "issue-mak: {v}");
        v["key"]
            .as_str()
            .unwrap_or_else(|| panic!("issue-mak gave no key: {v}"))
            .to_owned()
    }

    /// `tally authority run` on a free loopback port, with `envs`: the process (stopped when
    /// dropped) and its address.
    pub fn run_env(&self, envs: &[(&str, &str)]) -> (Process, SocketAddr) {
        let dir = self.dir.to_string_lossy();
        let mut args = self.args("run", &dir);
        args.extend(["--listen", "127.0.0.1:0"]);
        Process::spawn_listening(&self.bin, &args, envs, LISTENING)
    }

    /// As [`AuthorityDir::run_env`] with no extra environment.
    pub fn run(&self) -> (Process, SocketAddr) {
        self.run_env(&[])
    }
}
