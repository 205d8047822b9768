//! Issue 21 part 7, against a real host: an attacker with many IPv6 addresses of one /64 is one
//! source. 1,100 slowloris connections from 40 addresses of one /64 while 20 real clients share
//! one other address (a NAT or VDI gateway): at least 19 of the 20 are answered within 2 s.
//!
//! Loopback only, in a network namespace of the test's own: the outer test makes it, brings its
//! `lo` up with ULA addresses (`fd00:7a11:0:1::1..40` for the attacker, `fd00:7a11:0:2::1` for the
//! host and its gateway clients) and runs the scenario in this same test binary inside it
//! (`ip netns exec`), so no interface of the machine is touched and no outside address is used.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_test_support::{HostProcess, skip, tally_json, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::bin;
use crate::hostile::{metric, prepare_client};

/// Set in the namespace's child: run the scenario.
const INSIDE: &str = "TALLY_TEST_V6_LAB";
const HOST: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x7a11, 0, 2, 0, 0, 0, 1);
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

fn attacker(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x7a11, 0, 1, 0, 0, 0, 1 + i % 40)
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The test's namespace; deleted (its processes killed first) when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn lab() -> Result<Netns, String> {
    let ns = Netns(format!("tl6-{}", std::process::id()));
    ip(&["netns", "add", &ns.0])?;
    let exec = |args: &[&str]| {
        let mut all = vec!["-n", ns.0.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    };
    exec(&["link", "set", "lo", "up"])?;
    let mut addrs: Vec<Ipv6Addr> = (0..40).map(attacker).collect();
    addrs.push(HOST);
    for a in addrs {
        exec(&[
            "-6",
            "addr",
            "add",
            &format!("{a}/128"),
            "dev",
            "lo",
            "nodad",
        ])?;
    }
    Ok(ns)
}

// The outer test: makes the namespace and runs the scenario inside it (bounded: 5 minutes).
#[test]
fn a_flood_from_one_ipv6_64_does_not_stop_a_gateways_clients() {
    let name = "hostile_v6::a_flood_from_one_ipv6_64_does_not_stop_a_gateways_clients";
    let _heavy = crate::heavy();
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        skip(name, "needs root for a network namespace");
        return;
    }
    let ns = match lab() {
        Ok(ns) => ns,
        Err(e) => {
            skip(name, &format!("cannot make a network namespace ({e})"));
            return;
        }
    };
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(exe)
        .args([
            "--exact",
            "hostile_v6::inside_the_lab",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INSIDE, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the scenario in the namespace");
    let finished = wait_until(Duration::from_secs(300), || child.try_wait().ok().flatten());
    let status = finished.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the scenario did not finish within 5 minutes")
    });
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(status.success(), "the scenario failed in the namespace");
    assert!(
        text.contains("1 passed"),
        "the scenario ran (not filtered out)"
    );
}

async fn connect_from(source: Ipv6Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v6()?;
    socket.bind((IpAddr::V6(source), 0).into())?;
    socket.connect(addr).await
}

/// Slowloris: one byte of a frame every 3 s; reconnects when closed (evicted).
async fn slowloris(
    src: Ipv6Addr,
    addr: SocketAddr,
    stop: CancellationToken,
    closed: Arc<AtomicU64>,
) {
    while !stop.is_cancelled() {
        let Ok(mut conn) = connect_from(src, addr).await else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
            }
        };
        let mut frame = vec![0u8, 248];
        frame.extend(std::iter::repeat_n(1u8, 248));
        for b in frame {
            let mut probe = [0u8; 1];
            if conn.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                r = conn.read(&mut probe) => { let _ = r; break }
                _ = tokio::time::sleep(Duration::from_secs(3)) => {}
            }
        }
        closed.fetch_add(1, Ordering::Relaxed);
    }
}

// The scenario, run only by the outer test inside its namespace (ignored otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_flood_from_one_ipv6_64_does_not_stop_a_gateways_clients in its namespace"]
async fn inside_the_lab() {
    assert_eq!(
        std::env::var(INSIDE).as_deref(),
        Ok("1"),
        "run by the outer test only"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = HostProcess::start_on(bin(), &tmp.path().join("host"), &format!("[{HOST}]:0"), &[]);
    let token = std::fs::read_to_string(host.data_dir.join("admin.token")).expect("admin token");
    let token = token.trim().to_owned();
    let addr = host.addr;
    let stop = CancellationToken::new();
    let closed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1100u16 {
        tasks.spawn(slowloris(
            attacker(i),
            addr,
            stop.clone(),
            Arc::clone(&closed),
        ));
    }
    // The /64 is one source: it holds the per-source cap (128) however many addresses it uses,
    // each new connection evicting one of its own.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let open = metric(host.admin, &token, "tally_connections_open", "").await;
        let evicted = metric(
            host.admin,
            &token,
            "tally_connections_evicted_total",
            "source_limit",
        )
        .await;
        if open >= 120.0 && evicted >= 500.0 {
            assert!(
                open <= 140.0,
                "the /64 holds about its per-source cap, not {open}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "flood not in place: open {open}, evicted within the source {evicted}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // 20 real clients behind one gateway address (the host's own, another /64), all at once.
    let dirs: Vec<_> = (0..20)
        .map(|n| prepare_client(tmp.path(), &format!("pc{n}"), &host))
        .collect();
    let target = addr.to_string();
    let runs: Vec<_> = dirs
        .into_iter()
        .map(|dir| {
            let target = target.clone();
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let (_, v): (Option<i32>, Value) = tally_json(
                    bin(),
                    &[
                        "client",
                        "--state-dir",
                        dir.to_str().expect("utf-8"),
                        "--json",
                        "activate",
                        "--host",
                        &target,
                    ],
                );
                (started.elapsed(), v)
            })
        })
        .collect();
    let mut answered = 0;
    let mut slowest = Duration::ZERO;
    for r in runs {
        let (took, v) = r.await.expect("join");
        slowest = slowest.max(took);
        let ok = matches!(v["result"].as_str(), Some("below_threshold" | "activated"));
        eprintln!("client: {ok} after {took:?}: {}", v["result"]);
        if ok && took <= ANSWER_WITHIN {
            answered += 1;
        }
    }
    eprintln!(
        "{answered} of 20 answered within 2 s (slowest {slowest:?}); attacker connections closed: {}",
        closed.load(Ordering::Relaxed)
    );
    assert!(answered >= 19, "only {answered} of 20 answered within 2 s");
    stop.cancel();
    while tasks.join_next().await.is_some() {}
}
