//! `tally bench`: a bounded load generator against a host.
//!
//! Each of `--concurrency` workers sends activation requests for `--clients` distinct CMIDs,
//! over a fresh TCP connection per request (or one kept-alive connection with `--keepalive`),
//! until `--duration` or `--requests` is reached. Latency goes into an HDR histogram. With
//! `--baseline`, the same load first runs against a trivial in-process server that answers each
//! 250-byte request with 250 bytes: the physical limit of this machine for that traffic.
//!
//! The bench checks that each response decodes as a successful activation response; it does
//! not verify signatures (that is the client's cost, not the host's).
//!
//! Several `--host` (a fleet) share the load: worker *w* talks to host *w mod n*. With
//! `--host-pid` (one per host process) the report has the hosts' CPU time per request, read from
//! `/proc/PID/stat` before and after the run; the baseline server then runs as a child process
//! of its own, so its CPU per request is measured the same way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tally_core::Catalog;
use tally_proto::{ActivationRequest, LicenseState, MAX_FRAME, MachineName, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use uuid::Uuid;

use crate::output::{Table, json};

mod seed;
use tally_client::ops::with_default_port;

/// `tally bench` options.
#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Host to load, HOST:PORT; repeat (or separate with commas) for a fleet, and the load is
    /// spread over them. Only loopback or hosts you run yourself.
    #[arg(
        long,
        value_name = "HOST:PORT",
        value_delimiter = ',',
        required_unless_present_any = ["baseline_server", "seed_registry"]
    )]
    host: Vec<String>,
    /// Distinct CMIDs to cycle through.
    #[arg(long, default_value_t = 1000)]
    clients: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds to run (ignored when --requests is given).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests instead of after --duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Reuse one connection per worker instead of a fresh one per request.
    #[arg(long)]
    keepalive: bool,
    /// First run the same load against a trivial 250-byte echo server and report the ratio.
    #[arg(long)]
    baseline: bool,
    /// Edition SKU to request [default: the bench edition, which the host counts in a pool of
    /// its own that no listing or compliance report shows; the host must accept it:
    /// `--accept-bench`, on with `--dev`]. A real edition's SKU adds the bench's machines to
    /// that edition's count, registry and reports.
    #[arg(long)]
    sku: Option<Uuid>,
    /// Instead of a load: add this many synthetic machines to the registry of a new data
    /// directory (`--data-dir`, which must have no database yet), then time a registry page,
    /// search and count on it. Start a host on it afterwards to bench at that scale.
    #[arg(
        long,
        value_name = "ROWS",
        requires = "data_dir",
        conflicts_with = "host"
    )]
    seed_registry: Option<u64>,
    /// The data directory `--seed-registry` creates.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// Process id of a host, to report its peak memory and CPU time per request (Linux);
    /// repeat for a fleet.
    #[arg(long, value_delimiter = ',')]
    host_pid: Vec<u32>,
    /// Internal: run only the baseline server and print its address (the bench starts it as a
    /// child process to measure its CPU).
    #[arg(long, hide = true)]
    baseline_server: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Host,
    Baseline,
}

#[derive(Serialize, Clone)]
struct Report {
    target: String,
    connections: &'static str,
    requests: u64,
    errors: u64,
    errors_by_kind: BTreeMap<String, u64>,
    seconds: f64,
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    host_peak_rss_mb: Option<f64>,
    /// CPU time (user + system) of the server processes per answered request, µs.
    cpu_us_per_request: Option<f64>,
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

fn new_hist() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")
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

async fn worker(plan: Arc<Plan>, worker: usize) -> anyhow::Result<WorkerResult> {
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
        let result = timeout(Duration::from_secs(10), async {
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

/// CPU time (user + system) a process has used, in µs, from `/proc/PID/stat`.
fn cpu_us(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1e6 / clock_ticks())
}

/// Clock ticks per second in `/proc/PID/stat`: Linux's USER_HZ, fixed at 100 on every
/// architecture Tally runs on (whatever the kernel's own HZ), so no `sysconf` call is needed.
fn clock_ticks() -> f64 {
    100.0
}

fn rss_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn run_load(
    args: &BenchArgs,
    mode: Mode,
    addrs: Vec<SocketAddr>,
    pids: &[u32],
    frames: Vec<Vec<u8>>,
) -> anyhow::Result<Report> {
    let label = match (mode, addrs.as_slice()) {
        (Mode::Baseline, _) => "baseline".to_owned(),
        (Mode::Host, [one]) => format!("host {one}"),
        (Mode::Host, many) => format!("fleet of {}", many.len()),
    };
    let plan = Arc::new(Plan {
        mode,
        addrs,
        frames,
        keepalive: args.keepalive,
        deadline: match args.requests {
            Some(_) => None,
            None => {
                Some(Instant::now() + Duration::from_secs_f64(args.duration.clamp(0.1, 3600.0)))
            }
        },
        budget: args.requests,
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.requests.unwrap_or(0))
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} {spinner} {elapsed:>4} {pos:>9} requests  {per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_prefix(label.clone());
    let cpu_before: Option<f64> = pids.iter().map(|p| cpu_us(*p)).sum();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.concurrency);
    for w in 0..args.concurrency.max(1) {
        tasks.push(tokio::spawn(worker(Arc::clone(&plan), w)));
    }
    let mut peak_rss: Option<f64> = None;
    while !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bar.set_position(plan.done.load(Ordering::Relaxed));
        if mode == Mode::Host
            && let Some(mb) = pids
                .iter()
                .map(|p| rss_mb(*p, "VmRSS:"))
                .sum::<Option<f64>>()
            && !pids.is_empty()
        {
            peak_rss = Some(peak_rss.map_or(mb, |p: f64| p.max(mb)));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after: Option<f64> = pids.iter().map(|p| cpu_us(*p)).sum();
    bar.finish_and_clear();
    let mut hist = new_hist()?;
    let mut errors_by_kind = BTreeMap::new();
    for t in tasks {
        let r = t.await.context("bench worker panicked")??;
        hist.add(&r.hist).context("merging histograms")?;
        for (k, v) in r.errors {
            *errors_by_kind.entry(k).or_insert(0) += v;
        }
    }
    let ok = hist.len();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        target: label,
        connections: if args.keepalive {
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

/// The trivial server: reads 250 bytes, answers 250 bytes, until the peer closes.
async fn baseline_server() -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; MAX_FRAME];
                while s.read_exact(&mut buf).await.is_ok() {
                    if s.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok((addr, handle))
}

/// What the bench asks for: its SKU, pool and threshold.
struct Asked {
    sku: Uuid,
    pool: Uuid,
    threshold: u16,
}

fn request_frames(args: &BenchArgs) -> anyhow::Result<Vec<Vec<u8>>> {
    let catalog = Catalog::demo();
    let edition = match args.sku {
        Some(sku) => {
            let e = catalog
                .edition(sku)
                .with_context(|| format!("sku {sku} is not in the demo catalog"))?;
            Asked {
                sku: e.sku,
                pool: e.pool,
                threshold: e.threshold,
            }
        }
        None => Asked {
            sku: tally_core::bench::SKU,
            pool: tally_core::bench::POOL,
            threshold: tally_core::bench::THRESHOLD,
        },
    };
    let clients = args.clients.max(1);
    Ok((0..clients)
        .map(|i| {
            Message::ActivationRequest(ActivationRequest {
                nonce: [0; 16],
                cmid: Uuid::from_u128(0xBE4C_0000_0000_0000_0000_0000_0000_0000 | u128::from(i)),
                pool: edition.pool,
                sku: edition.sku,
                threshold: edition.threshold,
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

/// `--baseline-server`: serves the trivial baseline until killed, after printing its address.
async fn serve_baseline_only() -> anyhow::Result<ExitCode> {
    let (addr, handle) = baseline_server().await?;
    println!("tally baseline listening on {addr}");
    handle.await.context("baseline server")?;
    Ok(ExitCode::SUCCESS)
}

/// Starts the baseline server as a child process (so its CPU time is its own) and returns it
/// with its address.
fn spawn_baseline() -> anyhow::Result<(std::process::Child, SocketAddr)> {
    use std::io::BufRead;
    let exe =
        std::env::current_exe().context("cannot find the tally binary to start the baseline")?;
    let mut child = std::process::Command::new(exe)
        .args(["bench", "--baseline-server"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("cannot start the baseline server")?;
    let stdout = child.stdout.take().context("baseline stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .context("baseline server did not start")?;
    let addr = line
        .trim()
        .strip_prefix("tally baseline listening on ")
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("baseline server said {line:?}"))?;
    Ok((child, addr))
}

async fn resolve(hosts: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::with_capacity(hosts.len());
    for h in hosts {
        if h.contains("://") {
            bail!("--host takes HOST:PORT (e.g. 127.0.0.1:1688), not a URL: {h}");
        }
        let host = with_default_port(h);
        let addr = tokio::net::lookup_host(&host)
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        if !addr.ip().is_loopback() {
            eprintln!(
                "note: loading {addr}, which is not loopback: make sure it is a host you run."
            );
        }
        addrs.push(addr);
    }
    Ok(addrs)
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.baseline_server {
        return serve_baseline_only().await;
    }
    if let (Some(rows), Some(dir)) = (args.seed_registry, args.data_dir.as_deref()) {
        return seed::run(rows, dir, args.json).await;
    }
    let addrs = resolve(&args.host).await?;
    if args.concurrency == 0 || args.concurrency > 4096 {
        bail!("--concurrency must be between 1 and 4096");
    }
    let mut reports = Vec::new();
    if args.baseline {
        let (mut child, baddr) = spawn_baseline()?;
        let report = run_load(
            &args,
            Mode::Baseline,
            vec![baddr],
            &[child.id()],
            vec![vec![0x42; MAX_FRAME]],
        )
        .await;
        let _ = child.kill();
        let _ = child.wait();
        reports.push(report?);
    }
    let mut host_report = run_load(
        &args,
        Mode::Host,
        addrs,
        &args.host_pid,
        request_frames(&args)?,
    )
    .await?;
    if !args.host_pid.is_empty() {
        host_report.host_peak_rss_mb = args
            .host_pid
            .iter()
            .map(|p| rss_mb(*p, "VmHWM:"))
            .sum::<Option<f64>>()
            .or(host_report.host_peak_rss_mb);
    }
    reports.push(host_report);
    let ratio = match reports.as_slice() {
        [base, host] => Some(host.requests_per_second / base.requests_per_second.max(1e-9)),
        _ => None,
    };
    if args.json {
        json(&serde_json::json!({
            "concurrency": args.concurrency,
            "clients": args.clients,
            "reports": reports,
            "ratio_to_baseline": ratio,
            "cpu_ratio_to_baseline": match reports.as_slice() {
                [base, host] => base
                    .cpu_us_per_request
                    .zip(host.cpu_us_per_request)
                    .map(|(b, h)| h / b.max(1e-9)),
                _ => None,
            },
        }))?;
    } else {
        let mut t = Table::new(&[
            "TARGET",
            "CONNECTIONS",
            "REQUESTS",
            "ERRORS",
            "REQ/S",
            "P50 MS",
            "P99 MS",
            "P99.9 MS",
            "CPU US/REQ",
        ]);
        for r in &reports {
            t.row(vec![
                r.target.clone(),
                r.connections.to_owned(),
                r.requests.to_string(),
                r.errors.to_string(),
                format!("{:.0}", r.requests_per_second),
                format!("{:.3}", r.p50_ms),
                format!("{:.3}", r.p99_ms),
                format!("{:.3}", r.p999_ms),
                r.cpu_us_per_request
                    .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}")),
            ]);
        }
        print!("{}", t.render());
        for r in &reports {
            for (kind, n) in &r.errors_by_kind {
                println!("  {}: {n} x {kind}", r.target);
            }
        }
        if args.sku.is_none()
            && reports
                .iter()
                .any(|r| r.errors_by_kind.contains_key("host result unknown_edition"))
        {
            println!(
                "  the host does not answer the bench edition: start it with --accept-bench \
                 (on with --dev; `accept_bench = true` in its config), or pass --sku of a real \
                 edition (its machines then appear in that edition's registry and reports)"
            );
        }
        if let Some(ratio) = ratio {
            println!("host / baseline throughput: {ratio:.2}");
        }
        if let [base, host] = reports.as_slice()
            && let (Some(b), Some(h)) = (base.cpu_us_per_request, host.cpu_us_per_request)
        {
            println!("host / baseline CPU per request: {:.2}x", h / b.max(1e-9));
        }
        if let Some(mb) = reports.last().and_then(|r| r.host_peak_rss_mb) {
            println!("host peak RSS: {mb:.1} MB");
        }
    }
    let failed = reports.last().is_some_and(|r| r.requests == 0);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
