//! The load generator: each of `concurrency` workers sends activation requests for distinct
//! CMIDs over a fresh TCP connection per request (or one kept-alive connection), until a
//! duration or a number of requests is reached. Latency goes into an HDR histogram.
//!
//! Each response must decode as a successful activation response; signatures are not checked
//! (that is the client's cost, not the host's). Several hosts (a fleet) share the load: worker
//! *w* talks to host *w mod n*. With the hosts' process ids, the report has their CPU time per
//! request and peak memory ([`crate::proc_stat`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tally_core::Catalog;
use tally_proto::{ActivationRequest, LicenseState, MAX_FRAME, MachineName, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use uuid::Uuid;

use crate::BenchError;
use crate::proc_stat::{cpu_us, memory_mb};

/// The most workers a load may have.
pub const MAX_CONCURRENCY: usize = 4096;

/// How long one exchange may take before it counts as a `timeout` error.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How much load, and how it is sent.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Requests in flight at once (1..=[`MAX_CONCURRENCY`]).
    pub concurrency: usize,
    /// How long to run when `requests` is `None` (clamped to 0.1 s..1 h).
    pub duration: Duration,
    /// Stop after this many requests instead.
    pub requests: Option<u64>,
    /// One connection per worker instead of a fresh one per request.
    pub keepalive: bool,
}

/// What is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Tally hosts: activation requests, answers checked.
    Host,
    /// The raw baseline ([`crate::baseline`]): 250 bytes each way.
    Baseline,
}

/// One load's result.
#[derive(Serialize, Clone, Debug)]
pub struct Report {
    /// `baseline`, `host ADDR` or `fleet of N`.
    pub target: String,
    /// `fresh` or `keep-alive`.
    pub connections: &'static str,
    /// Answered requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Failed requests by kind (`connect: …`, `host result …`, `timeout`).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Answered requests per second.
    pub requests_per_second: f64,
    /// Latency percentiles, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Peak resident memory of the hosts (sum), MB.
    pub host_peak_rss_mb: Option<f64>,
    /// CPU time (user + system) of the server processes per answered request, µs.
    pub cpu_us_per_request: Option<f64>,
}

struct Plan {
    mode: Mode,
    addrs: Vec<SocketAddr>,
    frames: Vec<Vec<u8>>,
    keepalive: bool,
    deadline: Option<Instant>,
    budget: Option<u64>,
    issued: AtomicU64,
    done: AtomicU64,
    stop: AtomicBool,
}

impl Plan {
    fn next(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        if self.budget.is_some_and(|b| n >= b) || self.deadline.is_some_and(|d| Instant::now() >= d)
        {
            self.stop.store(true, Ordering::Relaxed);
            return None;
        }
        Some(n)
    }
}

struct WorkerResult {
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

fn new_hist() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| BenchError::Histogram(e.to_string()))
}

async fn one_exchange(stream: &mut TcpStream, plan: &Plan, frame: &[u8]) -> Result<(), String> {
    stream
        .write_all(frame)
        .await
        .map_err(|e| format!("write: {}", e.kind()))?;
    match plan.mode {
        Mode::Baseline => {
            let mut buf = [0u8; MAX_FRAME];
            stream
                .read_exact(&mut buf)
                .await
                .map_err(|e| format!("read: {}", e.kind()))?;
            Ok(())
        }
        Mode::Host => {
            let bytes = tally_client::connect::read_frame(stream)
                .await
                .map_err(|e| format!("read: {}", e.kind()))?;
            match Message::decode(&bytes) {
                Ok(Message::ActivationResponse(r)) if r.result.is_success() => Ok(()),
                Ok(Message::ActivationResponse(r)) => Err(format!(
                    "host result {}",
                    r.result.name().unwrap_or("unknown")
                )),
                Ok(Message::Error(e)) => Err(format!(
                    "host error {}",
                    e.result.name().unwrap_or("unknown")
                )),
                Ok(_) => Err("unexpected message".into()),
                Err(_) => Err("undecodable response".into()),
            }
        }
    }
}

async fn worker(plan: Arc<Plan>, worker: usize) -> Result<WorkerResult, BenchError> {
    let mut hist = new_hist()?;
    let mut errors = BTreeMap::new();
    let mut conn: Option<TcpStream> = None;
    let mut frame = Vec::with_capacity(MAX_FRAME);
    while let Some(n) = plan.next() {
        frame.clear();
        frame.extend_from_slice(&plan.frames[(n as usize + worker) % plan.frames.len()]);
        if plan.mode == Mode::Host {
            // A fresh nonce per request (bytes 4..20 of an activation request).
            frame[4..12].copy_from_slice(&n.to_be_bytes());
        }
        let start = Instant::now();
        let result = timeout(EXCHANGE_TIMEOUT, async {
            let mut stream = match conn.take() {
                Some(s) => s,
                None => {
                    let s = TcpStream::connect(plan.addrs[worker % plan.addrs.len()])
                        .await
                        .map_err(|e| format!("connect: {}", e.kind()))?;
                    let _ = s.set_nodelay(true);
                    s
                }
            };
            one_exchange(&mut stream, &plan, &frame).await?;
            Ok::<_, String>(stream)
        })
        .await
        .unwrap_or_else(|_| Err("timeout".into()));
        match result {
            Ok(stream) => {
                let micros = start.elapsed().as_micros().max(1) as u64;
                let _ = hist.record(micros.min(60_000_000));
                if plan.keepalive {
                    conn = Some(stream);
                }
            }
            Err(kind) => *errors.entry(kind).or_insert(0) += 1,
        }
        plan.done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(WorkerResult { hist, errors })
}

/// Runs one load against `addrs` (with `frames` to send, cycled) and reports it. `pids` are
/// the server processes charged for CPU and memory (none: not measured). `progress` is told
/// the requests done so far, every 100 ms.
pub async fn run(
    options: &LoadOptions,
    mode: Mode,
    addrs: Vec<SocketAddr>,
    pids: &[u32],
    frames: Vec<Vec<u8>>,
    progress: impl Fn(u64),
) -> Result<Report, BenchError> {
    if options.concurrency == 0 || options.concurrency > MAX_CONCURRENCY {
        return Err(BenchError::Concurrency(options.concurrency));
    }
    let label = match (mode, addrs.as_slice()) {
        (Mode::Baseline, _) => "baseline".to_owned(),
        (Mode::Host, [one]) => format!("host {one}"),
        (Mode::Host, many) => format!("fleet of {}", many.len()),
    };
    if addrs.is_empty() || frames.is_empty() {
        return Err(BenchError::NoAddress(label));
    }
    let plan = Arc::new(Plan {
        mode,
        addrs,
        frames,
        keepalive: options.keepalive,
        deadline: match options.requests {
            Some(_) => None,
            None => Some(
                Instant::now()
                    + options
                        .duration
                        .clamp(Duration::from_millis(100), Duration::from_secs(3600)),
            ),
        },
        budget: options.requests,
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let cpu_before: Option<f64> = pids.iter().map(|p| cpu_us(*p)).sum();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(options.concurrency);
    for w in 0..options.concurrency {
        tasks.push(tokio::spawn(worker(Arc::clone(&plan), w)));
    }
    let mut peak_rss: Option<f64> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !tasks.iter().all(|t| t.is_finished()) {
        tick.tick().await;
        progress(plan.done.load(Ordering::Relaxed));
        if mode == Mode::Host
            && !pids.is_empty()
            && let Some(mb) = pids
                .iter()
                .map(|p| memory_mb(*p, "VmRSS:"))
                .sum::<Option<f64>>()
        {
            peak_rss = Some(peak_rss.map_or(mb, |p: f64| p.max(mb)));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after: Option<f64> = pids.iter().map(|p| cpu_us(*p)).sum();
    let mut hist = new_hist()?;
    let mut errors_by_kind = BTreeMap::new();
    for t in tasks {
        let r = t.await.map_err(|e| BenchError::Worker(e.to_string()))??;
        hist.add(&r.hist)
            .map_err(|e| BenchError::Histogram(e.to_string()))?;
        for (k, v) in r.errors {
            *errors_by_kind.entry(k).or_insert(0) += v;
        }
    }
    if mode == Mode::Host && !pids.is_empty() {
        // The kernel's own high-water mark beats our 100 ms samples.
        peak_rss = pids
            .iter()
            .map(|p| memory_mb(*p, "VmHWM:"))
            .sum::<Option<f64>>()
            .or(peak_rss);
    }
    let ok = hist.len();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        target: label,
        connections: if options.keepalive {
            "keep-alive"
        } else {
            "fresh"
        },
        requests: ok,
        errors: errors_by_kind.values().sum(),
        errors_by_kind,
        seconds,
        requests_per_second: ok as f64 / seconds.max(1e-9),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        host_peak_rss_mb: peak_rss,
        cpu_us_per_request: match (cpu_before, cpu_after, pids.is_empty()) {
            (Some(b), Some(a), false) if ok > 0 => Some((a - b) / ok as f64),
            _ => None,
        },
    })
}

/// The activation requests the bench sends, one per client: for `sku` of the demo catalog, or
/// by default the bench edition (`tally_core::bench`), which hosts count in a pool of its own
/// that no listing or compliance report shows.
pub fn request_frames(sku: Option<Uuid>, clients: u32) -> Result<Vec<Vec<u8>>, BenchError> {
    let (sku, pool, threshold) = match sku {
        Some(sku) => {
            let catalog = Catalog::demo();
            let e = catalog.edition(sku).ok_or(BenchError::UnknownSku(sku))?;
            (e.sku, e.pool, e.threshold)
        }
        None => (
            tally_core::bench::SKU,
            tally_core::bench::POOL,
            tally_core::bench::THRESHOLD,
        ),
    };
    Ok((0..clients.max(1))
        .map(|i| {
            Message::ActivationRequest(ActivationRequest {
                nonce: [0; 16],
                cmid: Uuid::from_u128(0xBE4C_0000_0000_0000_0000_0000_0000_0000 | u128::from(i)),
                pool,
                sku,
                threshold,
                license_state: LicenseState::InitialGrace,
                grace_remaining_minutes: 43_200,
                client_time: 0,
                // Version 1: the bench measures the counting path, not clone detection.
                ext: None,
                machine_name: MachineName::lossy(&format!("bench-{i}")),
            })
            .encode()
        })
        .collect())
}

/// The addresses of `hosts` (HOST:PORT, the port defaulting to Tally's).
pub async fn resolve(hosts: &[String]) -> Result<Vec<SocketAddr>, BenchError> {
    let mut addrs = Vec::with_capacity(hosts.len());
    for h in hosts {
        if h.contains("://") {
            return Err(BenchError::NotHostPort(h.clone()));
        }
        let host = tally_client::ops::with_default_port(h);
        let addr = tokio::net::lookup_host(&host)
            .await
            .map_err(|source| BenchError::Resolve {
                host: host.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| BenchError::NoAddress(host.clone()))?;
        addrs.push(addr);
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(requests: u64) -> LoadOptions {
        LoadOptions {
            concurrency: 4,
            duration: Duration::from_secs(10),
            requests: Some(requests),
            keepalive: true,
        }
    }

    #[tokio::test]
    async fn a_bounded_load_against_the_baseline_answers_every_request() {
        let (addr, server) = crate::baseline::start().await.expect("baseline");
        let seen = std::sync::Mutex::new(0u64);
        let report = run(
            &options(200),
            Mode::Baseline,
            vec![addr],
            &[],
            vec![vec![0x42; MAX_FRAME]],
            |n| *seen.lock().expect("lock") = n,
        )
        .await
        .expect("load");
        server.abort();
        assert_eq!(report.requests, 200);
        assert_eq!(report.errors, 0);
        assert_eq!(report.target, "baseline");
        assert!(report.p50_ms <= report.p99_ms && report.p99_ms <= report.max_ms);
        assert!(report.cpu_us_per_request.is_none());
    }

    #[tokio::test]
    async fn a_closed_port_is_counted_as_connect_errors_not_answers() {
        // A port nothing listens on: bind, note it, close.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let report = run(
            &options(8),
            Mode::Host,
            vec![addr],
            &[],
            request_frames(None, 2).expect("frames"),
            |_| {},
        )
        .await
        .expect("load");
        assert_eq!(report.requests, 0);
        assert_eq!(report.errors, 8);
        assert!(
            report
                .errors_by_kind
                .keys()
                .all(|k| k.starts_with("connect"))
        );
    }

    #[tokio::test]
    async fn bad_arguments_are_named() {
        assert!(matches!(
            resolve(&["http://h:1".into()]).await,
            Err(BenchError::NotHostPort(_))
        ));
        let zero = LoadOptions {
            concurrency: 0,
            ..options(1)
        };
        assert!(matches!(
            run(&zero, Mode::Baseline, vec![], &[], vec![], |_| {}).await,
            Err(BenchError::Concurrency(0))
        ));
        let sku = Uuid::from_u128(7);
        assert!(matches!(
            request_frames(Some(sku), 1),
            Err(BenchError::UnknownSku(s)) if s == sku
        ));
        let frames = request_frames(None, 3).expect("frames");
        assert_eq!(frames.len(), 3);
        assert!(frames.iter().all(|f| f.len() <= MAX_FRAME));
    }
}
