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

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tally_bench::load::{self, LoadOptions, Mode, Report};
use tally_bench::{BenchError, baseline};
use tally_proto::MAX_FRAME;
use uuid::Uuid;

use crate::output::{Table, json};

mod seed;

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

impl BenchArgs {
    fn options(&self) -> LoadOptions {
        LoadOptions {
            concurrency: self.concurrency,
            duration: Duration::from_secs_f64(self.duration.clamp(0.1, 3600.0)),
            requests: self.requests,
            keepalive: self.keepalive,
        }
    }
}

/// One load with a progress line (hidden with --json).
async fn run_load(
    args: &BenchArgs,
    mode: Mode,
    addrs: Vec<SocketAddr>,
    pids: &[u32],
    frames: Vec<Vec<u8>>,
) -> Result<Report, BenchError> {
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
    bar.set_prefix(match mode {
        Mode::Baseline => "baseline",
        Mode::Host => "host",
    });
    let report = load::run(&args.options(), mode, addrs, pids, frames, |n| {
        bar.set_position(n)
    })
    .await;
    bar.finish_and_clear();
    report
}

/// `--baseline-server`: serves the trivial baseline until killed, after printing its address.
async fn serve_baseline_only() -> anyhow::Result<ExitCode> {
    let (addr, handle) = baseline::start().await?;
    println!("{}{addr}", baseline::LISTENING);
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
    let addr = baseline::parse_listening(&line)
        .with_context(|| format!("baseline server said {line:?}"))?;
    Ok((child, addr))
}

/// Runs the benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.baseline_server {
        return serve_baseline_only().await;
    }
    if let (Some(rows), Some(dir)) = (args.seed_registry, args.data_dir.as_deref()) {
        return seed::run(rows, dir, args.json).await;
    }
    // `Duration::from_secs_f64` panics on NaN and infinity, which clap parses as f64.
    anyhow::ensure!(
        args.duration.is_finite(),
        "--duration takes seconds, e.g. 10 or 0.5 (got {})",
        args.duration
    );
    let addrs = load::resolve(&args.host).await?;
    for addr in addrs.iter().filter(|a| !a.ip().is_loopback()) {
        eprintln!("note: loading {addr}, which is not loopback: make sure it is a host you run.");
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
    let frames = load::request_frames(args.sku, args.clients)?;
    reports.push(run_load(&args, Mode::Host, addrs, &args.host_pid, frames).await?);
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
