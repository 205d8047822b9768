//! `tally`: the one binary. It parses arguments, sets up logging, and hands off to the
//! libraries; errors are printed once, with their chain.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod cmd;
mod output;
mod paths;
mod util;

/// Tally: on-premises volume activation.
///
/// A vendor (the authority) issues keys; customers run hosts on their own networks; clients
/// activate against a host once enough machines are counted, then renew every 7 days.
///
/// Start here:  tally demo            (a host and 30 clients on loopback, in seconds)
///              tally host run --dev  (a self-certified host for trying things out)
#[derive(Parser)]
#[command(
    name = "tally",
    // "0.1.0 (commit 0123abcd4567)", set by build.rs; "unknown" outside a git checkout.
    version = env!("TALLY_VERSION"),
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// Log filter (e.g. `info`, `debug`, `tally_server=debug`); overrides RUST_LOG.
    #[arg(long, global = true, env = "TALLY_LOG")]
    log: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a host and ~30 clients on loopback and show the counts rising (R3).
    Demo(cmd::demo::DemoArgs),
    /// Run and administer an activation host.
    #[command(subcommand)]
    Host(cmd::host::HostCommand),
    /// License this installation: install a key, activate, status, rearm, generalize.
    Client(cmd::client::ClientArgs),
    /// The long-running client service: activates and renews on its timers.
    #[command(subcommand)]
    Agent(cmd::agent::AgentCommand),
    /// Admin-familiar aliases: `tally slmgr /ipk KEY`, `/ato`, `/dli`, `/skms HOST`, `/rearm`, …
    Slmgr(cmd::slmgr::SlmgrArgs),
    /// The vendor's authority: root key, host keys, host certificates.
    #[command(subcommand)]
    Authority(cmd::authority::AuthorityCommand),
    /// Show the product catalog.
    #[command(subcommand)]
    Catalog(cmd::catalog::CatalogCommand),
    /// Check the authority's transparency log with only its public key (X8).
    #[command(subcommand)]
    Log(cmd::log::LogCommand),
    /// Load-test a host (requests/s, latency percentiles).
    Bench(cmd::bench::BenchArgs),
    /// Man pages and shell completions, for packagers (scripts/dist.sh).
    #[command(subcommand, hide = true)]
    Generate(cmd::generate::GenerateCommand),
}

/// Installs the subscriber. Lines are written by a background thread (the request path only
/// formats them); the returned guard flushes on drop. No line is ever dropped: when the writer
/// falls behind, logging callers wait.
fn init_tracing(cli: &Cli, default: &str) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter = cli
        .log
        .as_deref()
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    guard
}

/// A closed stdout (`tally host clients | head`) ends the process quietly, as for any Unix
/// tool, instead of a panic in `println!`. One-shot commands only: a running host or agent keeps
/// running when whoever reads its stdout goes away.
#[cfg(unix)]
#[allow(unsafe_code)]
fn default_sigpipe() {
    // SAFETY: called first thing in `main`, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(cmd::slmgr::normalize_args(std::env::args_os().collect()));
    #[cfg(unix)]
    if !matches!(
        &cli.command,
        Command::Host(cmd::host::HostCommand::Run(_))
            | Command::Agent(_)
            | Command::Authority(cmd::authority::AuthorityCommand::Run { .. })
    ) {
        default_sigpipe();
    }
    // One TLS crypto provider for the process (ring: already used for DNS TSIG), installed
    // before any HTTP client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The host logs its events at info; one-shot commands only warn unless asked.
    let default_level = match &cli.command {
        Command::Host(cmd::host::HostCommand::Run(_))
        | Command::Agent(_)
        | Command::Authority(cmd::authority::AuthorityCommand::Run { .. }) => "info",
        _ => "warn",
    };
    let _log_guard = init_tracing(&cli, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => cmd::demo::run(args).await,
            Command::Host(c) => cmd::host::run(c).await,
            Command::Client(args) => cmd::client::run(args).await,
            Command::Agent(c) => cmd::agent::run(c).await,
            Command::Slmgr(args) => cmd::slmgr::run(args).await,
            Command::Authority(c) => cmd::authority::run(c).await,
            Command::Catalog(c) => cmd::catalog::run(c),
            Command::Log(c) => cmd::log::run(c).await,
            Command::Bench(args) => cmd::bench::run(args).await,
            Command::Generate(c) => cmd::generate::run(c, Cli::command()),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            // ripgrep style: the whole chain, once; then what to do about it.
            eprintln!("error: {}", util::error_text(&err));
            if let Some(hint) = util::io_hint(&err) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}
