//! A catalog signed by the authority, imported into a running host (R24 with R21), with real
//! processes: the host serves the new edition its key covers and not a newer generation;
//! unsigned, tampered and older catalogs are refused.

use std::time::Duration;

use tally_test_support::{tally, tally_json};

use crate::authority::{out_text, s};
use crate::bin;

/// The demo catalog as version 2, with a new pool and edition (generation 1) and a
/// generation-2 edition; returns (text, lab setup key, 2027 setup key).
fn catalog_v2() -> (String, String, String) {
    let lab = uuid::Uuid::from_u128(0x5c00_0000_0000_4000_8000_0000_0000_0101);
    let ws27 = uuid::Uuid::from_u128(0x5c00_0000_0000_4000_8000_0000_0000_0102);
    let pool = "a2026000-0000-4000-8000-000000000003";
    let lab_key = tally_core::ProductKey::setup_for(lab).to_string();
    let ws_key = tally_core::ProductKey::setup_for(ws27).to_string();
    let text = tally_core::catalog::DEMO_CATALOG.replace("version = 1", "version = 2")
        + &format!(
            "\n[[pools]]\nid = \"{pool}\"\nname = \"Acme Labs\"\n\n[[editions]]\nsku = \"{lab}\"\nname = \"Acme Lab Server 2026\"\n\
             kind = \"server\"\npool = \"{pool}\"\ngroup = \"server-a\"\ngeneration = 1\nsetup_key = \"{lab_key}\"\n\n\
             [[editions]]\nsku = \"{ws27}\"\nname = \"Acme Workstation Pro 2027\"\nkind = \"client\"\n\
             pool = \"a2026000-0000-4000-8000-000000000001\"\ngroup = \"client-vl\"\ngeneration = 2\nsetup_key = \"{ws_key}\"\n"
        );
    (text, lab_key, ws_key)
}

// R24 with R21: a newer catalog signed by the authority is loaded into a running host, which
// then serves the new edition its key covers, and not the newer generation; unsigned and
// tampered catalogs are refused.
#[test]
fn r24_signed_catalog_import_into_a_running_host() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("host");
    let host = tally_test_support::HostProcess::start_dev(bin(), &data, &[]);
    let (text, lab_key, ws_key) = catalog_v2();
    let plain = tmp.path().join("catalog-v2.toml");
    std::fs::write(&plain, &text).expect("write");
    let client = |name: &str, key: &str| -> (Option<i32>, serde_json::Value) {
        let dir = tmp.path().join(name);
        let c = ["--state-dir", s(&dir), "--catalog", s(&plain)];
        assert!(
            tally(
                bin(),
                &[
                    &["client"][..],
                    &c,
                    &["trust", s(&data.join("authority.pub"))]
                ]
                .concat()
            )
            .status
            .success()
        );
        assert!(
            tally(
                bin(),
                &[&["client"][..], &c, &["install-key", key]].concat()
            )
            .status
            .success()
        );
        tally_json(
            bin(),
            &[
                &["client"][..],
                &c,
                &["--json", "activate", "--host", &host.addr.to_string()],
            ]
            .concat(),
        )
    };
    let (code, v) = client("lab-before", &lab_key);
    assert_eq!(
        (code, v["result"].as_str()),
        (Some(1), Some("unknown_edition")),
        "{v}"
    );

    // Unsigned and tampered catalogs are refused.
    let out = tally(
        bin(),
        &[
            "host",
            "catalog",
            "import",
            "--data-dir",
            s(&data),
            s(&plain),
        ],
    );
    assert!(out_text(&out).contains("not signed"), "{}", out_text(&out));
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
    assert!(out.status.success(), "{}", out_text(&out));
    let tampered = tmp.path().join("tampered.toml");
    std::fs::write(
        &tampered,
        std::fs::read_to_string(&signed)
            .expect("read")
            .replace("threshold", "threshold ")
            .replace("Acme Lab Server 2026", "Acme Lab Server 2099"),
    )
    .expect("write");
    let out = tally(
        bin(),
        &[
            "host",
            "catalog",
            "import",
            "--data-dir",
            s(&data),
            s(&tampered),
        ],
    );
    assert!(
        out_text(&out).contains("does not verify"),
        "{}",
        out_text(&out)
    );

    let out = tally(
        bin(),
        &[
            "host",
            "catalog",
            "import",
            "--data-dir",
            s(&data),
            s(&signed),
        ],
    );
    assert!(out.status.success(), "{}", out_text(&out));
    assert!(
        host.wait_for_log("catalog loaded", Duration::from_secs(10)),
        "{}",
        host.stderr()
    );
    let (code, v) = client("lab-after", &lab_key);
    assert_eq!(
        (code, v["count"].as_u64()),
        (Some(2), Some(1)),
        "the new edition is served: {v}"
    );
    // R21: the host's generation-1 key does not cover the generation-2 edition.
    let (code, v) = client("ws2027", &ws_key);
    assert_eq!(
        (code, v["result"].as_str()),
        (Some(1), Some("edition_not_covered")),
        "{v}"
    );
    // Only newer catalogs are taken.
    let out = tally(
        bin(),
        &[
            "host",
            "catalog",
            "import",
            "--data-dir",
            s(&data),
            s(&signed),
        ],
    );
    assert!(out_text(&out).contains("not newer"), "{}", out_text(&out));
}
