//! Run real `tally` processes at another time with libfaketime (Debian's `faketime`), for the
//! trusted-time rules (X5). The library is preloaded into the process itself (not the forking
//! `faketime` wrapper), so a test's pid is the process's own and signals reach it.
//!
//! Only the wall clock moves: `DONT_FAKE_MONOTONIC=1` keeps the monotonic clock real, so tokio's
//! timers and deadlines behave as they would on a machine whose administrator changed the date.

use std::path::PathBuf;

/// Where Debian installs the multi-threaded preload library (any architecture directory).
fn library() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    for entry in dirs.flatten() {
        let candidate = entry.path().join("faketime/libfaketimeMT.so.1");
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    let plain = PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1");
    plain.is_file().then_some(plain)
}

/// The environment that runs a process with its wall clock moved by `offset` (libfaketime's
/// syntax: `+3650d`, `-100d`, `+1y`, or an absolute `@2036-01-01 00:00:00`), or `None` (after
/// [`crate::skip`], which fails under CI) when libfaketime is not installed.
pub fn env(offset: &str) -> Option<Vec<(String, String)>> {
    let Some(lib) = library() else {
        crate::skip(
            &crate::test_name(),
            "libfaketime is not installed (apt-get install faketime)",
        );
        return None;
    };
    Some(vec![
        ("LD_PRELOAD".into(), lib.to_string_lossy().into_owned()),
        ("FAKETIME".into(), offset.into()),
        ("DONT_FAKE_MONOTONIC".into(), "1".into()),
        ("FAKETIME_NO_CACHE".into(), "1".into()),
    ])
}

/// [`env`] as the borrowed pairs [`crate::Process::spawn`] takes.
pub fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}
