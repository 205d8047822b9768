//! Issue 22, part 5: every call of the embedding API, from C (`c/every_call.c`, compiled with
//! the real `cc` against the freshly built `libtally`) and from Python
//! (`bindings/python/tests/test_api.py` in a fresh venv), against a real `tally host run --dev`
//! and a real `tally authority run` over HTTP: a setup key at a host set by hand, the status's
//! CMID and times, a per-call timeout at a host that never answers, generalize seen by the wait
//! call, uninstall, a MAK online (authority URL) and offline (installation ID out, confirmation
//! ID in from `tally authority confirm`), the logging callback. The Python calls run from the
//! installed wheel against this world (`embedding::python_wheel_…`). A missing compiler or Python
//! skips with a `SKIP:` line, except under CI, where it fails.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tally_test_support::{HostProcess, Process, tally_json};

use super::bin;

use super::embedding::{SERVER_KEY, has, show, skip, workspace};

/// Acme Server Datacenter 2026: the edition the MAK activates (its setup key names it, R25).
const SERVER_DATACENTER: &str = "F7R4D-6HMTK-PVWRM-DXKYV-FFDH6";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The built `libtally` (the one release build under CI): see `embedding::libtally`.
fn libtally() -> PathBuf {
    super::embedding::libtally()
}

/// A dev host, an authority over HTTP with a MAK of budget 10, and a TCP listener that
/// accepts connections and never answers.
pub(crate) struct World {
    host: HostProcess,
    _authority: Process,
    authority_dir: PathBuf,
    url: String,
    mak: String,
    silent: TcpListener,
}

impl World {
    /// What `bindings/python/tests` read to find this world (the wheel's test in `embedding`
    /// runs every Python call against it).
    pub(crate) fn python_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TALLY_TEST_HOST", self.host.addr.to_string()),
            (
                "TALLY_TEST_TRUST",
                self.host
                    .data_dir
                    .join("authority.pub")
                    .display()
                    .to_string(),
            ),
            ("TALLY_TEST_SERVER_KEY", SERVER_KEY.to_owned()),
            ("TALLY_TEST_AUTHORITY", self.url.clone()),
            (
                "TALLY_TEST_AUTHORITY_TRUST",
                self.authority_dir
                    .join("authority.pub")
                    .display()
                    .to_string(),
            ),
            (
                "TALLY_TEST_AUTHORITY_DIR",
                self.authority_dir.display().to_string(),
            ),
            ("TALLY_TEST_MAK", self.mak.clone()),
            ("TALLY_TEST_MAK_EDITION_KEY", SERVER_DATACENTER.to_owned()),
            (
                "TALLY_TEST_SILENT_HOST",
                self.silent
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            ),
            ("TALLY_TEST_BIN", bin().display().to_string()),
        ]
    }

    pub(crate) fn start(root: &Path) -> Self {
        std::fs::create_dir_all(root).unwrap();
        let host = HostProcess::start_dev(bin(), &root.join("host"), &[]);
        let vendor =
            tally_test_support::authority::AuthorityDir::init(bin(), root.join("authority"));
        let adir = vendor.dir.clone();
        let mak = vendor.issue_mak(10);
        let (authority, addr) = vendor.run();
        Self {
            host,
            _authority: authority,
            url: format!("http://{addr}"),
            authority_dir: adir,
            mak,
            silent: TcpListener::bind("127.0.0.1:0").unwrap(),
        }
    }

    /// The authority's confirmation ID for an installation ID (R25 offline).
    fn confirm(&self, iid: &str) -> String {
        let (code, c) = tally_json(
            bin(),
            &[
                "authority",
                "confirm",
                "--dir",
                s(&self.authority_dir),
                iid,
                "--json",
            ],
        );
        assert_eq!(code, Some(0), "{c}");
        c["confirmation_id"]
            .as_str()
            .expect("confirmation_id")
            .to_owned()
    }
}

#[test]
fn every_c_call_against_a_real_host_and_authority() {
    let _heavy = crate::heavy();
    let test = "every_c_call_against_a_real_host_and_authority";
    if !has("cc", "--version") {
        return skip(test, "no C compiler (cc)");
    }
    let lib = libtally();
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("every_call");
    let built = Command::new("cc")
        .args([
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-D_POSIX_C_SOURCE=200809L",
            "-I",
        ])
        .arg(workspace().join("crates/tally-ffi/include"))
        .arg(workspace().join("crates/tally-cli/tests/integration/c/every_call.c"))
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&lib)
        .arg("-ltally")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .output()
        .unwrap();
    assert!(built.status.success(), "cc every_call.c\n{}", show(&built));
    let world = World::start(tmp.path());
    let states = tmp.path().join("states");
    // The offline MAK's confirmation is verified under the authority key the vendor ships in
    // the state directory (no activation call brings it there).
    let offline = states.join("mak-offline");
    std::fs::create_dir_all(&offline).unwrap();
    std::fs::copy(
        world.authority_dir.join("authority.pub"),
        offline.join("authority.pub"),
    )
    .unwrap();
    let mut child = Command::new(&exe)
        .arg(&states)
        .arg(world.host.addr.to_string())
        .arg(world.host.data_dir.join("authority.pub"))
        .arg(&world.url)
        .arg(world.authority_dir.join("authority.pub"))
        .arg(SERVER_KEY)
        .arg(&world.mak)
        .arg(world.silent.local_addr().unwrap().to_string())
        .arg(SERVER_DATACENTER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if let Some(iid) = line.strip_prefix("IID: ") {
            let confirmation = world.confirm(iid);
            writeln!(stdin, "{confirmation}").unwrap();
            stdin.flush().unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let all = format!(
        "{seen}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!seen.contains("FAIL"), "{all}");
    for check in [
        "ok: tally_result_name(0) is success",
        "ok: activate_ex at the host set by hand: below_threshold 1 of 5",
        "ok: read_status: grace, CMID, grace end, next attempt",
        "ok: activate_ex with timeout_ms 400 at a silent host: host_timeout",
        "ok: wait_for_change sees the new CMID",
        "ok: status after uninstall: unlicensed",
        "ok: activate_ex MAK without a URL: no_host naming the authority URL",
        "ok: MAK status: licensed, permanent",
        "ok: confirm\n",
        "ok: offline MAK status: permanent",
        "ok: the log callback received lines",
        "0 failures",
    ] {
        assert!(seen.contains(check), "missing {check:?}\n{all}");
    }
}
