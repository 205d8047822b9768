//! Issue 14 with real processes: `tally bench` asks for the bench edition, which a dev host
//! counts in a pool of its own that no listing, status or compliance report shows (while each
//! request is still in the event log, R27); a host that does not accept it gets a bench that
//! says how; and `--seed-registry` fills only a new data directory, which a host then serves.

use std::path::Path;

use serde_json::Value;
use tally_test_support::{HostProcess, tally, tally_json};

use crate::bin;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn bench(host: &HostProcess, requests: &str) -> (Option<i32>, Value) {
    tally_json(
        bin(),
        &[
            "bench",
            "--host",
            &host.addr.to_string(),
            "--requests",
            requests,
            "--concurrency",
            "4",
            "--clients",
            "40",
            "--host-pid",
            &host.pid().to_string(),
            "--json",
        ],
    )
}

#[test]
fn a_bench_counts_in_the_bench_pool_and_reaches_no_listing_or_report() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &[]);
    let (code, v) = bench(&host, "200");
    assert_eq!(code, Some(0), "{v}");
    let report = &v["reports"][0];
    assert_eq!(
        (report["requests"].as_u64(), report["errors"].as_u64()),
        (Some(200), Some(0)),
        "{v}"
    );
    assert!(
        report["cpu_us_per_request"]
            .as_f64()
            .is_some_and(|c| c > 0.0),
        "{v}"
    );

    let dir = s(&host.data_dir);
    let (_, clients) = tally_json(bin(), &["host", "clients", "--data-dir", dir, "--json"]);
    assert_eq!(clients["total"], 0, "{clients}");
    let (_, status) = tally_json(bin(), &["host", "status", "--data-dir", dir, "--json"]);
    assert_eq!(status["registry_clients"], 0, "{status}");
    assert!(
        status["pools"].as_array().is_some_and(|p| p.is_empty()),
        "the bench pool is in no summary: {status}"
    );
    let file = tmp.path().join("report.json");
    let out = tally(
        bin(),
        &[
            "host",
            "report",
            "--data-dir",
            dir,
            "--format",
            "json",
            "--out",
            s(&file),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).expect("report");
    assert!(
        !text.contains("bench-"),
        "no bench machine in the report: {text}"
    );
    // Every request is in the event log, as event 1006 (a bench request), never as 12290: no
    // dashboard series or activation audit counts synthetic machines.
    let events = |id: &str| {
        let (_, v) = tally_json(
            bin(),
            &[
                "host",
                "events",
                "--data-dir",
                dir,
                "--id",
                id,
                "--limit",
                "1000",
                "--json",
            ],
        );
        v.as_array().map(Vec::len)
    };
    assert_eq!((events("1006"), events("12290")), (Some(200), Some(0)));
}

#[test]
fn a_host_that_does_not_accept_the_bench_edition_gets_a_bench_that_says_how() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("host.toml");
    std::fs::write(&config, "accept_bench = false\n").expect("config");
    let host = HostProcess::start_dev(bin(), &tmp.path().join("host"), &["--config", s(&config)]);
    let out = tally(
        bin(),
        &[
            "bench",
            "--host",
            &host.addr.to_string(),
            "--requests",
            "10",
            "--concurrency",
            "2",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "nothing answered is a failed bench"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("unknown_edition") && stdout.contains("--accept-bench"),
        "{stdout}"
    );
}

#[test]
fn seed_registry_fills_only_a_new_data_dir_which_a_host_then_serves() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("scale");
    let seed = |dir: &Path| {
        tally_json(
            bin(),
            &[
                "bench",
                "--seed-registry",
                "2000",
                "--data-dir",
                s(dir),
                "--json",
            ],
        )
    };
    let (code, v) = seed(&dir);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["rows"], 2000);
    let queries = v["queries"].as_array().expect("timed queries");
    assert!(
        queries.iter().all(|q| q["median_ms"].as_f64().is_some()),
        "{v}"
    );
    assert!(
        queries
            .iter()
            .any(|q| q["query"] == "page, by machine" && q["rows"] == 50),
        "{v}"
    );

    // A second seeding of the same directory is refused, naming it; nothing is added.
    let out = tally(
        bin(),
        &["bench", "--seed-registry", "5", "--data-dir", s(&dir)],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already has a database") && err.contains(s(&dir)),
        "{err}"
    );

    let host = HostProcess::start_dev(bin(), &dir, &[]);
    let (_, found) = tally_json(
        bin(),
        &[
            "host",
            "clients",
            "--data-dir",
            s(&host.data_dir),
            "--search",
            "SEED-0000001",
            "--json",
        ],
    );
    assert_eq!(found["total"], 10, "seed-00000010 … seed-00000019: {found}");
    let (_, all) = tally_json(
        bin(),
        &["host", "status", "--data-dir", s(&host.data_dir), "--json"],
    );
    assert_eq!(all["registry_clients"], 2000, "{all}");
}

// Bad input is a clear error, never a panic: clap parses NaN and inf as numbers of seconds.
#[test]
fn a_duration_that_is_not_a_number_of_seconds_is_refused() {
    for bad in ["NaN", "inf"] {
        let out = tally(
            bin(),
            &["bench", "--host", "127.0.0.1:9", "--duration", bad],
        );
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {text}");
        assert!(text.contains("--duration takes seconds"), "{bad}: {text}");
        assert!(!text.contains("panicked"), "{bad}: {text}");
    }
}
