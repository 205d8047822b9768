//! Issue 11: one path resolves the catalog and one opens the store for reading, for every
//! command. Each test here failed before the paths were unified.

use std::path::Path;
use std::process::{Command, Output};

use tally_test_support::{HostProcess, tally};

use crate::bin;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `tally` with `TALLY_CATALOG` set, as an operator's environment would have it.
fn tally_with_catalog(catalog: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("RUST_LOG")
        .env("TALLY_CATALOG", catalog)
        .output()
        .expect("run tally")
}

// Bug (a): offline commands fell back to the demo catalog and ignored the configured one, so
// `status` named the wrong catalog and `catalog import` allowed a downgrade (R24).
#[test]
fn offline_commands_use_the_configured_catalog_and_import_refuses_a_downgrade() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("host");
    // A dev host creates the identity and the authority that signs catalogs.
    let host = HostProcess::start_dev(bin(), &data, &[]);
    drop(host);
    let configured = tmp.path().join("catalog-v3.toml");
    std::fs::write(
        &configured,
        tally_core::catalog::DEMO_CATALOG.replace("version = 1", "version = 3"),
    )
    .expect("write");

    let out = tally_with_catalog(
        &configured,
        &["host", "status", "--json", "--data-dir", s(&data)],
    );
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status["catalog"]["version"], 3, "{status}");

    let plain = tmp.path().join("catalog-v2.toml");
    std::fs::write(
        &plain,
        tally_core::catalog::DEMO_CATALOG.replace("version = 1", "version = 2"),
    )
    .expect("write");
    let signed = tmp.path().join("catalog-v2.signed.toml");
    let out = tally(
        bin(),
        &[
            "authority",
            "sign-catalog",
            "--dir",
            s(&data.join("dev-authority")),
            s(&plain),
            "--out",
            s(&signed),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = tally_with_catalog(
        &configured,
        &[
            "host",
            "catalog",
            "import",
            "--data-dir",
            s(&data),
            s(&signed),
        ],
    );
    assert!(
        !out.status.success(),
        "a downgrade was imported: {}",
        text(&out)
    );
    assert!(text(&out).contains("not newer"), "{}", text(&out));
    assert!(!data.join("catalog.toml").exists());
}

// Bug (b): read commands opened the database as a second writer and ran migrations, creating a
// database where there was none.
#[test]
fn read_commands_open_no_writer_and_create_no_database() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("host");
    std::fs::create_dir_all(&data).expect("mkdir");
    for cmd in [&["events", "--json"][..], &["clients", "--json"][..]] {
        let out = tally(
            bin(),
            &[&["host"][..], cmd, &["--data-dir", s(&data)]].concat(),
        );
        assert!(!out.status.success(), "{cmd:?}: {}", text(&out));
        assert!(
            text(&out).contains("no host database"),
            "{cmd:?}: {}",
            text(&out)
        );
        assert!(
            !data.join("tally.db").exists(),
            "{cmd:?} created a database"
        );
    }
}
