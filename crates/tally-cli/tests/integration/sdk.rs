//! Issue 22: the C SDK as a vendor gets it (docs/EMBEDDING.md, "Getting the SDK"). The SDK
//! tarball `scripts/dist.sh` built is unpacked into a prefix of its own, and the C and C++
//! examples are built against that *installed* SDK both ways a vendor's build does it:
//! pkg-config (`tally`, shared; `tally-static`) and CMake (`find_package(Tally)`, the
//! `examples/CMakeLists.txt`). Each program then activates against a real host run from the
//! same artifacts; the shared ones load `libtally.so.0` by its SONAME.

use std::path::Path;
use std::process::Command;

use tally_test_support::{HostProcess, skip};

use super::dist::{artifact, dir, has, run_ok, show};

/// Acme Server Web 2026: a server edition, threshold 5 (R1).
const SERVER_KEY: &str = "FW777-M677J-W8KJV-QG4VJ-HC6WP";

fn workspace() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn installed_sdk_builds_the_examples_with_pkg_config_and_cmake() {
    const TEST: &str = "installed_sdk_builds_the_examples_with_pkg_config_and_cmake";
    let Some(dist) = dir(TEST) else { return };
    for (tool, what) in [
        ("cc", "a C compiler (cc)"),
        ("c++", "a C++ compiler (c++)"),
        ("pkg-config", "pkg-config"),
        ("cmake", "cmake"),
        ("readelf", "readelf (binutils)"),
    ] {
        if !has(tool, "--version") {
            return skip(TEST, &format!("needs {what}"));
        }
    }
    let _heavy = crate::heavy();
    let tmp = tempfile::tempdir().unwrap();
    // Installed as a vendor does: unpacked anywhere (the files locate their prefix themselves).
    let tarball = artifact(&dist, "tally-sdk-", ".tar.gz");
    run_ok(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(tmp.path()),
    );
    let name = tarball.file_name().unwrap().to_string_lossy();
    let prefix = tmp.path().join(name.trim_end_matches(".tar.gz"));
    let lib = prefix.join("lib");
    let soname = std::fs::read_link(lib.join("libtally.so")).unwrap();
    assert_eq!(soname, Path::new("libtally.so.0"), "libtally.so → SONAME");
    let dynamic = run_ok(
        Command::new("readelf")
            .arg("-d")
            .arg(lib.join("libtally.so.0")),
    );
    assert!(
        dynamic.contains("Library soname: [libtally.so.0]"),
        "{dynamic}"
    );

    // pkg-config, as a Makefile would use it.
    let pc = |args: &str| {
        run_ok(
            Command::new("sh")
                .arg("-c")
                .arg(format!("pkg-config {args}"))
                .env("PKG_CONFIG_PATH", lib.join("pkgconfig")),
        )
        .split_whitespace()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    let examples = workspace().join("examples");
    let pc_c = tmp.path().join("activate-pkgconfig");
    run_ok(
        Command::new("cc")
            .args(["-Wall", "-Wextra", "-Werror"])
            .args(pc("--cflags tally"))
            .arg(examples.join("c/activate.c"))
            .args(pc("--libs tally"))
            .arg("-o")
            .arg(&pc_c),
    );
    let pc_cpp = tmp.path().join("activate-cpp-pkgconfig");
    run_ok(
        Command::new("c++")
            .args(["-std=c++17", "-Wall", "-Wextra", "-Werror"])
            .args(pc("--cflags tally-static"))
            .arg(examples.join("cpp/activate.cpp"))
            .args(pc("--libs tally-static"))
            .arg("-o")
            .arg(&pc_cpp),
    );

    // CMake, with the examples' own CMakeLists.txt.
    let build = tmp.path().join("cmake-build");
    run_ok(
        Command::new("cmake")
            .arg("-S")
            .arg(&examples)
            .arg("-B")
            .arg(&build)
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display())),
    );
    run_ok(Command::new("cmake").arg("--build").arg(&build));
    let cmake_c = build.join("activate");
    let cmake_cpp = build.join("activate-cpp");

    // Shared programs name the SONAME; static ones need no libtally at run time.
    for (exe, shared) in [
        (&pc_c, true),
        (&cmake_c, true),
        (&pc_cpp, false),
        (&cmake_cpp, false),
    ] {
        let needed = run_ok(Command::new("readelf").arg("-d").arg(exe));
        assert_eq!(
            needed.contains("Shared library: [libtally.so.0]"),
            shared,
            "{}: {needed}",
            exe.display()
        );
    }

    let tally = dist.join("tally");
    let host = HostProcess::start_dev(&tally, &tmp.path().join("host"), &[]);
    let run = |exe: &Path, pc: &str| {
        Command::new(exe)
            .arg(tmp.path().join(pc))
            .arg(SERVER_KEY)
            .arg(host.addr.to_string())
            .arg(host.data_dir.join("authority.pub"))
            // The pkg-config build has no rpath: the loader finds libtally.so.0 here.
            .env("LD_LIBRARY_PATH", &lib)
            .output()
            .unwrap()
    };
    let programs = [&pc_c, &pc_cpp, &cmake_c, &cmake_cpp];
    for (i, exe) in programs.iter().enumerate() {
        let n = i + 1;
        let out = run(exe, &format!("pc{n}"));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: {}",
            exe.display(),
            show(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("count {n} of 5")),
            "{}: {}",
            exe.display(),
            show(&out)
        );
    }
    // The fifth machine activates (R1), through the CMake-built shared program.
    let out = run(&cmake_c, "pc5");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("status: licensed"));
}
