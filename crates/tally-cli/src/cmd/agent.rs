//! `tally agent run`: the long-running client service.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use tally_agent::{Agent, default_socket};
use tally_core::time::{Clock, SteadyClock, SystemClock};
use tokio_util::sync::CancellationToken;

use crate::cmd::client::ClientOpts;
use crate::util::spawn_signal_handler;

/// `tally agent ...`
#[derive(Subcommand)]
pub enum AgentCommand {
    /// Activate and renew on the lifecycle's timers and serve local status queries (systemd
    /// friendly: logs to stderr, stops on SIGTERM).
    Run(RunArgs),
}

/// `tally agent run` options.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    opts: ClientOpts,
    /// Use this host (HOST[:PORT], not a URL) and turn discovery off (same as `tally client
    /// set-host`); saved only once the agent has started.
    #[arg(long, value_name = "HOST:PORT", value_parser = crate::util::parse_host)]
    host: Option<String>,
}

/// Runs an agent command.
pub async fn run(cmd: AgentCommand) -> anyhow::Result<ExitCode> {
    let AgentCommand::Run(args) = cmd;
    let client = args.opts.client()?;
    let socket = args
        .opts
        .socket
        .clone()
        .unwrap_or_else(|| default_socket(&args.opts.dir()));
    // X5: the agent's timers follow the monotonic clock between wall-clock readings.
    let clock: Arc<dyn Clock> = Arc::new(SteadyClock::new(SystemClock));
    let mut agent = Agent::new(client, socket, clock);
    if let Some(name) = args.opts.machine_name.clone() {
        agent = agent.with_machine_name(name);
    }
    // Applied by the agent once it holds its socket: a failed start saves nothing.
    if let Some(host) = args.host.clone() {
        agent = agent.with_host(host);
    }
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    Arc::new(agent).run(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
