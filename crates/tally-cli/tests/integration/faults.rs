//! Hostile input, crashes and shutdown against a real host process (R15, R6).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tally_client::{ActivationParams, Connector};
use tally_core::time::{Clock, SystemClock};
use tally_core::trust::parse_authority_public;
use tally_core::{Catalog, EditionKind};
use tally_proto::{LicenseState, MachineName, Message, PROTOCOL_VERSION, ResultCode};
use tally_test_support::{HostProcess, tally_json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::bin;

fn connector(host: &HostProcess) -> Connector {
    let anchor = parse_authority_public(
        &std::fs::read_to_string(host.data_dir.join("authority.pub")).expect("read"),
    )
    .expect("anchor");
    Connector::new(anchor, Duration::from_secs(5))
}

fn server_params() -> ActivationParams {
    let edition = Catalog::demo()
        .editions()
        .iter()
        .find(|e| e.kind == EditionKind::Server)
        .cloned()
        .expect("server");
    ActivationParams {
        cmid: Uuid::new_v4(),
        edition,
        machine_name: MachineName::lossy("load"),
        license_state: LicenseState::InitialGrace,
        grace_remaining_minutes: 1,
        // Version 1: the load reuses one CMID from many connections at once.
        installation: None,
    }
}

/// Sends `bytes`, half-closes, and reads whatever comes back (bounded).
async fn poke(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return Vec::new();
    };
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    out
}

// R15: a barrage of random bytes and malformed frames never crashes the host; it still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_survives_a_barrage_of_random_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut host = HostProcess::start_dev(bin(), tmp.path(), &[]);
    let addr = host.addr;
    let mut rng = StdRng::seed_from_u64(0x7A11);
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for i in 0..1500u32 {
        let len = rng.random_range(0..600usize);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if i % 2 == 0 && bytes.len() >= 4 {
            // A plausible header so the body decoders are reached.
            let body = (bytes.len() - 2).min(248) as u16;
            bytes[..2].copy_from_slice(&body.to_be_bytes());
            bytes[2] = PROTOCOL_VERSION;
            bytes[3] = rng.random_range(1..=6);
        }
        inputs.push(bytes);
    }
    let inputs = Arc::new(inputs);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let inputs = Arc::clone(&inputs);
        tasks.push(tokio::spawn(async move {
            for bytes in inputs.iter().skip(w).step_by(16) {
                poke(addr, bytes).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    assert!(host.is_running(), "host died; log:\n{}", host.stderr());
    let answer = connector(&host)
        .activate(&addr.to_string(), &server_params(), SystemClock.now())
        .await;
    assert_eq!(answer.expect("still serves").count, 1);
}

// R15: a length over 250 bytes is refused from the prefix alone, with an error frame.
#[tokio::test]
async fn oversized_frame_is_refused_with_an_error_and_closed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_dev(bin(), tmp.path(), &[]);
    let mut big = vec![0xFF, 0xFF, PROTOCOL_VERSION, 1];
    big.extend(std::iter::repeat_n(0u8, 4000));
    let reply = poke(host.addr, &big).await;
    assert_eq!(
        Message::decode(&reply),
        Ok(Message::Error(tally_proto::ErrorMessage {
            result: ResultCode::FRAME_TOO_LARGE
        }))
    );
    assert!(
        host.wait_for_log("oversized or malformed frame", Duration::from_secs(5)),
        "{}",
        host.stderr()
    );
}

// Timeouts from the config file: a peer that sends half a frame and stalls is dropped.
#[tokio::test]
async fn stalled_request_is_dropped_after_the_read_timeout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("host.toml");
    std::fs::write(&config, "read_timeout_secs = 1\nidle_timeout_secs = 2\n")
        .expect("write config");
    let host = HostProcess::start_dev(
        bin(),
        &tmp.path().join("data"),
        &["--config", config.to_str().expect("utf-8")],
    );
    let mut s = TcpStream::connect(host.addr).await.expect("connect");
    s.write_all(&[0, 100, PROTOCOL_VERSION])
        .await
        .expect("write");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed in time");
    assert_eq!(n.ok(), Some(0), "closed without a reply");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // An idle connection is closed too.
    let mut idle = TcpStream::connect(host.addr).await.expect("connect");
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("closed in time");
    assert_eq!(n.ok(), Some(0));
}

// Durability: kill -9 under load, restart: every client told "activated" is in the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_activation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut host = HostProcess::start_dev(bin(), tmp.path(), &[]);
    let c = Arc::new(connector(&host));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = host.addr.to_string();
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (c, acked, stop, addr) = (
            Arc::clone(&c),
            Arc::clone(&acked),
            Arc::clone(&stop),
            addr.clone(),
        );
        workers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let p = server_params();
                match c.activate(&addr, &p, SystemClock.now()).await {
                    Ok(a) if a.activated => {
                        acked.lock().await.insert(p.cmid);
                    }
                    Ok(_) => {}
                    Err(_) => break, // the host is gone
                }
            }
        }));
    }
    // Let the load build up, then pull the plug mid-flight.
    let deadline = Instant::now() + Duration::from_secs(15);
    while acked.lock().await.len() < 400 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    host.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("join");
    }
    let acked = acked.lock().await.clone();
    assert!(
        acked.len() >= 100,
        "too little load before the kill: {}",
        acked.len()
    );

    // Restart on the same data: it recovers and serves.
    let host = HostProcess::start_dev(bin(), tmp.path(), &[]);
    let after = connector(&host)
        .activate(&host.addr.to_string(), &server_params(), SystemClock.now())
        .await;
    assert!(after.expect("serves after restart").activated);
    let (_, clients) = tally_json(
        bin(),
        &[
            "host",
            "clients",
            "--data-dir",
            tmp.path().to_str().expect("utf-8"),
            "--limit",
            "1000000",
            "--json",
        ],
    );
    let stored: HashSet<Uuid> = clients["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter(|c| c["activated"] == true)
        .filter_map(|c| c["cmid"].as_str().and_then(|s| s.parse().ok()))
        .collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged activations lost of {}: {lost:?}",
        lost.len(),
        acked.len()
    );
}

// SIGTERM: the host stops accepting, finishes, logs, and exits 0.
#[test]
fn sigterm_stops_the_host_gracefully() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut host = HostProcess::start_dev(bin(), tmp.path(), &[]);
    let status = host
        .terminate(Duration::from_secs(10))
        .expect("exits within 10 s");
    assert!(status.success(), "{status:?}");
    assert!(
        host.wait_for_log("host stopped", Duration::from_secs(2)),
        "{}",
        host.stderr()
    );
}
