//! Embedding (docs/EMBEDDING.md): the C and C++ examples, compiled with `-Wall -Werror` against
//! the freshly built `libtally`, and the Python wheel from the release artifacts (`dist.rs`),
//! installed into a new venv and run with pytest, each against a real `tally host run --dev`. A missing compiler or Python skips
//! with a `SKIP:` line, except under CI, where it fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tally_test_support::HostProcess;

use super::bin;

/// Acme Server Web 2026: a server edition, threshold 5, covered by a dev host.
pub(crate) const SERVER_KEY: &str = "FW777-M677J-W8KJV-QG4VJ-HC6WP";

pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Skips visibly (a `SKIP:` line, kept in the CI summary) or, under CI, fails.
pub(crate) fn skip(test: &str, reason: &str) {
    tally_test_support::skip(test, reason);
}

pub(crate) fn has(tool: &str, version_arg: &str) -> bool {
    Command::new(tool)
        .arg(version_arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

pub(crate) fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Builds `libtally` (shared and static) with the cargo running these tests, in the same target
/// directory and profile, and returns that profile's output directory.
pub(crate) fn libtally() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/integration-HASH → target/<profile>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
    // Under `.ci/run` the one release build the tests and scripts/dist.sh share made it
    // already: a `cargo build -p tally-ffi` alone would unify other features and rebuild half
    // the tree.
    let prebuilt = std::env::var_os("TALLY_DIST_DIR").is_some()
        && profile_dir.file_name().is_some_and(|n| n == "release")
        && profile_dir.join("libtally.so").exists();
    if !prebuilt {
        build_libtally(&profile_dir);
    }
    // The library's SONAME is libtally.so.0 (docs/EMBEDDING.md, "ABI policy"): what a program
    // linked with -ltally loads at run time.
    let so0 = profile_dir.join("libtally.so.0");
    if std::fs::symlink_metadata(&so0).is_err() {
        let _ = std::os::unix::fs::symlink("libtally.so", &so0);
    }
    profile_dir
}

fn build_libtally(profile_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace())
        .args(["build", "--quiet", "-p", "tally-ffi", "--lib"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "cargo build -p tally-ffi\n{}",
        show(&out)
    );
    assert!(profile_dir.join("libtally.so").exists());
}

fn compile(
    compiler: &str,
    std: Option<&str>,
    source: &str,
    lib: &Path,
    out: &Path,
    static_link: bool,
) {
    let mut cmd = Command::new(compiler);
    if let Some(std) = std {
        cmd.arg(std);
    }
    cmd.args(["-Wall", "-Wextra", "-Werror", "-I"])
        .arg(workspace().join("crates/tally-ffi/include"))
        .arg(workspace().join(source))
        .arg("-o")
        .arg(out);
    if static_link {
        // What `rustc --print native-static-libs` lists for a staticlib on Linux.
        cmd.arg(lib.join("libtally.a")).args([
            "-lgcc_s",
            "-lutil",
            "-lrt",
            "-lpthread",
            "-lm",
            "-ldl",
            "-lc",
        ]);
    } else {
        cmd.arg("-L")
            .arg(lib)
            .arg("-ltally")
            .arg(format!("-Wl,-rpath,{}", lib.display()));
    }
    let built = cmd.output().unwrap();
    assert!(
        built.status.success(),
        "{compiler} {source}\n{}",
        show(&built)
    );
}

fn run_example(exe: &Path, state: &Path, host: &HostProcess) -> Output {
    Command::new(exe)
        .arg(state)
        .arg(SERVER_KEY)
        .arg(host.addr.to_string())
        .arg(host.data_dir.join("authority.pub"))
        .output()
        .unwrap()
}

#[test]
fn c_example_activates_the_fifth_server_and_reports_errors() {
    let _heavy = crate::heavy();
    if !has("cc", "--version") {
        return skip(
            "c_example_activates_the_fifth_server_and_reports_errors",
            "no C compiler (cc)",
        );
    }
    let lib = libtally();
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("activate");
    compile("cc", None, "examples/c/activate.c", &lib, &exe, false);
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    for i in 1..=5 {
        let out = run_example(&exe, &tmp.path().join(format!("pc{i}")), &host);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("count {i} of 5")),
            "{}",
            show(&out)
        );
        let expected = if i < 5 { 2 } else { 0 };
        assert_eq!(
            out.status.code(),
            Some(expected),
            "client {i}: {}",
            show(&out)
        );
        if i == 5 {
            assert!(stdout.contains("status: licensed"), "{}", show(&out));
            assert!(stdout.contains("days left"), "{}", show(&out));
        } else {
            assert!(stdout.contains("below_threshold"), "{}", show(&out));
        }
    }
    // A key that is not a key: exit 1 with the code and the library's message.
    let out = Command::new(&exe)
        .arg(tmp.path().join("bad"))
        .arg("BCDFG-BCDFG-BCDFG-BCDFG-BCDFG")
        .arg(host.addr.to_string())
        .arg(host.data_dir.join("authority.pub"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("0xC7A10202 key_not_usable"),
        "{}",
        show(&out)
    );
    assert!(
        !stderr.contains("BCDFG-BCDFG"),
        "the key is never echoed: {stderr}"
    );
    // A host that does not answer: exit 1, host_unreachable.
    let out = Command::new(&exe)
        .arg(tmp.path().join("pc9"))
        .arg(SERVER_KEY)
        .arg("127.0.0.1:1")
        .arg(host.data_dir.join("authority.pub"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("host_unreachable"),
        "{}",
        show(&out)
    );
}

#[test]
fn cpp_example_links_statically_and_wraps_the_handle() {
    let _heavy = crate::heavy();
    if !has("c++", "--version") {
        return skip(
            "cpp_example_links_statically_and_wraps_the_handle",
            "no C++ compiler (c++)",
        );
    }
    let lib = libtally();
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("activate-cpp");
    compile(
        "c++",
        Some("-std=c++17"),
        "examples/cpp/activate.cpp",
        &lib,
        &exe,
        true,
    );
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    let first = run_example(&exe, &tmp.path().join("pc1"), &host);
    assert_eq!(first.status.code(), Some(2), "{}", show(&first));
    assert!(String::from_utf8_lossy(&first.stdout).contains("below_threshold, count 1 of 5"));
    let out = Command::new(&exe)
        .arg(tmp.path().join("bad"))
        .arg("not a key")
        .arg(host.addr.to_string())
        .arg(host.data_dir.join("authority.pub"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(0xC7A10202)"),
        "{}",
        show(&out)
    );
}

/// Issue 22: the one abi3 wheel `scripts/dist.sh` built (maturin), installed into a fresh venv
/// whose PATH has no Rust toolchain, passes the binding's tests against a real host.
#[test]
fn python_wheel_installs_without_rust_and_its_tests_pass_against_a_host() {
    let _heavy = crate::heavy();
    let test = "python_wheel_installs_without_rust_and_its_tests_pass_against_a_host";
    let Some(dist) = super::dist::dir(test) else {
        return;
    };
    let wheel = super::dist::artifact(&dist, "tally-", ".whl");
    assert!(
        wheel.to_string_lossy().contains("-abi3-"),
        "one wheel for every CPython >= 3.9: {}",
        wheel.display()
    );
    let python = std::env::var("TALLY_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    if !has(&python, "--version") {
        return skip(test, "no python3");
    }
    let venv_ok = Command::new(&python)
        .args(["-c", "import venv, ensurepip"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !venv_ok {
        return skip(test, "python3 has no venv/ensurepip (Debian: python3-venv)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let venv = tmp.path().join("venv");
    let out = Command::new(&python)
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .output()
        .unwrap();
    assert!(out.status.success(), "python3 -m venv\n{}", show(&out));
    // A PATH with the venv and the system's directories only: no cargo, no rustc.
    let path = format!(
        "{}:/usr/local/bin:/usr/bin:/bin",
        venv.join("bin").display()
    );
    let no_rust = Command::new("sh")
        .args(["-c", "command -v cargo || command -v rustc"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        !no_rust.status.success(),
        "a Rust toolchain is on the venv's PATH: {}",
        show(&no_rust)
    );
    let out = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(&wheel)
        .arg("pytest")
        .env("PATH", &path)
        .env_remove("CARGO_HOME")
        .env_remove("RUSTUP_HOME")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pip install {}\n{}",
        wheel.display(),
        show(&out)
    );
    // The licensing flow (tests/test_licensing.py) against a dev host of its own: its counts
    // start at 1.
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    let pytest = |file: &str, envs: Vec<(&'static str, String)>| {
        let out = Command::new(venv.join("bin/python"))
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"])
            .arg(workspace().join("bindings/python/tests").join(file))
            .env("PATH", &path)
            .envs(envs)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "pytest {file}\n{}", show(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!stdout.contains("skipped"), "{}", show(&out));
        stdout
    };
    let stdout = pytest(
        "test_licensing.py",
        vec![
            ("TALLY_TEST_HOST", host.addr.to_string()),
            (
                "TALLY_TEST_TRUST",
                host.data_dir.join("authority.pub").display().to_string(),
            ),
            ("TALLY_TEST_SERVER_KEY", SERVER_KEY.to_owned()),
        ],
    );
    assert!(stdout.contains("6 passed"), "{stdout}");
    // Every call of the Python API (tests/test_api.py): a dev host, an authority over HTTP
    // with a MAK, a host that never answers.
    let world = super::embedding_api::World::start(&tmp.path().join("world"));
    let stdout = pytest("test_api.py", world.python_env());
    assert!(stdout.contains("4 passed"), "{stdout}");
}
