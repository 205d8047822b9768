//! Issue 15: the README's guide and OPERATIONS.md's command blocks run as written. Every
//! ```sh block is executed line by line in a fresh working directory, with the built `tally` in
//! place of `tally` and `cargo run --release --`; lines ending in `&` run in the background
//! until the test ends. Only the ports are substituted (free ones, so tests run in parallel).
//! A block preceded by `<!-- not-run: REASON -->` is skipped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::bin;

/// One runnable line of a document.
pub(crate) struct Line {
    pub(crate) block: usize,
    pub(crate) text: String,
}

/// The lines of the ```sh blocks of `doc`, skipping those marked not-run.
fn sh_lines(doc: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut skip = false;
    let mut block = 0;
    let mut previous = "";
    for line in doc.lines() {
        let trimmed = line.trim();
        if !in_block && trimmed.starts_with("```sh") {
            in_block = true;
            block += 1;
            skip = previous.starts_with("<!-- not-run:");
        } else if in_block && trimmed.starts_with("```") {
            in_block = false;
        } else if in_block && !skip && !trimmed.is_empty() && !trimmed.starts_with('#') {
            out.push(Line {
                block,
                text: trimmed.to_owned(),
            });
        }
        if !trimmed.is_empty() {
            previous = trimmed;
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Runs the lines of a document; returns the background processes (killed on drop). The X8
/// runbook test (`rollover`) uses it too.
pub(crate) struct Runner {
    dir: tempfile::TempDir,
    path: String,
    ports: HashMap<&'static str, String>,
    background: Vec<Child>,
}

impl Runner {
    pub(crate) fn new(ports: &[&'static str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin_dir = dir.path().join(".bin");
        std::fs::create_dir_all(&bin_dir).expect("bin dir");
        std::os::unix::fs::symlink(bin(), bin_dir.join("tally")).expect("symlink tally");
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let ports = ports
            .iter()
            .map(|p| (*p, free_port().to_string()))
            .collect();
        Self {
            dir,
            path,
            ports,
            background: Vec::new(),
        }
    }

    pub(crate) fn command(&self, line: &str) -> Command {
        let mut text = line.replace("cargo run --release --", "tally");
        for (from, to) in &self.ports {
            text = text.replace(from, to);
        }
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(text)
            .current_dir(self.dir.path())
            .env("PATH", &self.path)
            .env("HOME", self.dir.path())
            .env_remove("XDG_DATA_HOME")
            .env_remove("TALLY_DATA_DIR")
            .env_remove("TALLY_STATE_DIR")
            .env_remove("RUST_LOG");
        cmd
    }

    /// Runs one line: in the foreground it must exit 0 (an `activate` may exit 2, "below the
    /// threshold", as documented); in the background it must say it is ready.
    pub(crate) fn run(&mut self, line: &Line, doc: &str) {
        // A trailing `# comment` is the reader's; `&` before it sends the command to the background.
        let command = line.text.split(" #").next().unwrap_or_default().trim_end();
        if let Some(bg) = command.strip_suffix('&') {
            let bg = bg.trim();
            let mut child = self
                .command(&format!("exec {bg}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            // Ready when it says so: a listener prints `listening on`, the agent logs its start.
            let (tx, rx) = mpsc::channel::<String>();
            for stream in [
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            ]
            .into_iter()
            .flatten()
            {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for l in BufReader::new(stream).lines().map_while(Result::ok) {
                        let _ = tx.send(l);
                    }
                });
            }
            let mut seen = String::new();
            let ready = loop {
                match rx.recv_timeout(Duration::from_secs(30)) {
                    Ok(l) => {
                        let done = l.contains("listening on") || l.contains("agent started");
                        seen.push_str(&l);
                        seen.push('\n');
                        if done {
                            break true;
                        }
                    }
                    Err(_) => break false,
                }
            };
            assert!(
                ready,
                "{doc} block {}: `{}` did not become ready:\n{seen}",
                line.block, line.text
            );
            // Keep draining its output so that it never blocks on a full pipe.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            self.background.push(child);
            return;
        }
        let out = self.command(&line.text).output().expect("run line");
        let code = out.status.code();
        let ok = code == Some(0) || (code == Some(2) && line.text.contains(" activate "));
        assert!(
            ok,
            "{doc} block {}: `{}` exited {code:?}\nstdout:\n{}\nstderr:\n{}",
            line.block,
            line.text,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{doc}: ok: {}", line.text);
    }

    pub(crate) fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        for child in &mut self.background {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// The README keeps its two set-up commands (after the install section) and its guide runs, in order, as written; the reader
// sees "activated" at the fifth server, the agent answers, a real host activates with a vendor's
// authority and a MAK client activates with it.
#[test]
fn readme_guide_runs_as_written() {
    let readme = doc("README.md");
    let lines = sh_lines(&readme);
    // The two commands of "Two commands": the demo (run below) and the test suite (not run).
    assert_eq!(
        lines.first().map(|l| l.text.as_str()),
        Some("cargo run --release -- demo")
    );
    assert!(readme.contains(
        "<!-- not-run: the test suite itself -->\n```sh\ncargo test --workspace --release\n```"
    ));
    // The test suite, and the two install blocks (system packages as root; the release files):
    // packages.rs, sdk.rs and embedding.rs run those steps on the artifacts.
    let not_run = readme.matches("<!-- not-run:").count();
    assert_eq!(not_run, 3, "keep the README's not-run list short");
    let mut runner = Runner::new(&["1688", "1689", "1690", "1698", "1699", "8080"]);
    for line in &lines {
        runner.run(line, "README.md");
    }
    // What the reader was promised along the way.
    let status = std::fs::read_to_string(runner.path("report.csv")).expect("report written");
    assert!(status.contains("pc5"), "{status}");
    assert!(runner.path("backup.db").exists());
    let out = runner
        .command("tally client --state-dir ./pc5 status --json")
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["licensed"], true, "the fifth server is activated: {v}");
    let out = runner
        .command("tally client --state-dir ./mak1 status --json")
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["licensed"], true, "the MAK client is activated: {v}");
}

// OPERATIONS.md's command blocks run too, except those that need a DNS server or a path under
// /var or /etc (each marked not-run with its reason).
#[test]
fn operations_blocks_run_as_written() {
    let ops = doc("docs/OPERATIONS.md");
    let lines = sh_lines(&ops);
    assert!(!lines.is_empty(), "OPERATIONS.md has runnable blocks");
    let mut runner = Runner::new(&["1688", "1689", "1690"]);
    for line in &lines {
        runner.run(line, "docs/OPERATIONS.md");
    }
}
