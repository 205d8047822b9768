//! Where the release artifacts are (docs/PACKAGING.md): the tests of what users install (the
//! Debian packages, the C SDK, the Python wheel) use the files `scripts/dist.sh` built once,
//! never a build of their own. `.ci/run` runs `scripts/dist.sh` first and sets
//! `TALLY_DIST_DIR`; without it the workspace's `target/dist` is used when it holds a
//! `SHA256SUMS`. Missing: the test skips visibly, and fails under CI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tally_test_support::skip;

/// The artifacts directory, or `None` after a skip (which panics under CI).
pub fn dir(test: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("TALLY_DIST_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/dist"),
    };
    if dir.join("SHA256SUMS").is_file() {
        eprintln!("{test}: artifacts from {}", dir.display());
        Some(dir)
    } else {
        skip(
            test,
            &format!(
                "no release artifacts in {} (run scripts/dist.sh, or set TALLY_DIST_DIR)",
                dir.display()
            ),
        );
        None
    }
}

/// The one file in `dir` whose name starts with `prefix` and ends with `suffix`.
pub fn artifact(dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "want one {prefix}*{suffix} in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().unwrap()
}

/// Whether `tool --version` (or the given argument) runs.
pub fn has(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A command's outcome, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd`, asserts it succeeded, returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(out.status.success(), "{what}\n{}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
