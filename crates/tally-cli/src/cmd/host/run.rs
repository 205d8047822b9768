//! `tally host run`: flags into a [`HostConfig`], then [`Host::start`]; prints the stable
//! `tally host listening on ADDR` lines scripts and tests wait for.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use tally_host::config::{DurabilityMode, Interval, Overrides};
use tally_host::{Host, HostConfig};
use tokio_util::sync::CancellationToken;

use super::DirArgs;
use crate::util::spawn_signal_handler;

/// `tally host run` options. Each can also be set in the config file; flags win.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Create a local authority and certify this host on first start (for trying Tally out).
    #[arg(long)]
    dev: bool,
    /// Address and port to listen on [default: 0.0.0.0:1688].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    dir: DirArgs,
    /// Retry interval after a failure, sent to clients (R8, R9): minutes, or with a unit
    /// (`30s`, `15m`, `2h`, `7d`) [default: 120].
    #[arg(long, value_name = "MIN")]
    activation_interval: Option<Interval>,
    /// Renewal interval, sent to clients (R8, R9): minutes, or with a unit [default: 10080].
    #[arg(long, value_name = "MIN")]
    renewal_interval: Option<Interval>,
    /// Connections served at once [default: 1024].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Commit durability: `full` survives power loss, `normal` only a process crash [default: full].
    #[arg(long, value_name = "MODE")]
    durability: Option<DurabilityArg>,
    /// Do not publish DNS records even if the config file has a `[dns]` section (R17).
    #[arg(long)]
    no_dns_publish: bool,
    /// This host's name in a fleet's registry and events [default: the config file's
    /// `host_name`, else the machine name and the certificate fingerprint's first 8 hex digits].
    #[arg(long, value_name = "NAME")]
    host_name: Option<String>,
    /// Serve the admin API over TLS with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM) for --admin-tls-cert.
    #[arg(long, value_name = "FILE", requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// Address of the admin API, metrics and dashboard (R26) [default: 127.0.0.1:1689; with
    /// --dev a free loopback port]. It is printed and written to DATA_DIR/admin.addr.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Answer `tally bench`'s synthetic edition, counted in a pool of its own that no listing,
    /// count or compliance report shows [default: the config file's `accept_bench`; on with
    /// --dev].
    #[arg(long)]
    accept_bench: bool,
    /// Fleet mode: refuse to start unless the database replicates commits synchronously to a
    /// standby in sync, so that no acknowledged activation is lost in a failover (`tally host
    /// check` shows the replication) [default: the config file's `require_sync_replication`].
    #[arg(long)]
    require_sync_replication: bool,
}

/// `--durability`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum DurabilityArg {
    Full,
    Normal,
}

impl RunArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            activation_interval: self.activation_interval,
            renewal_interval: self.renewal_interval,
            max_connections: self.max_connections,
            durability: self.durability.map(|d| match d {
                DurabilityArg::Full => DurabilityMode::Full,
                DurabilityArg::Normal => DurabilityMode::Normal,
            }),
            admin_listen: self.admin_listen,
            admin_tls_cert: self.admin_tls_cert.clone(),
            admin_tls_key: self.admin_tls_key.clone(),
            no_dns_publish: self.no_dns_publish,
            dev: self.dev,
            host_name: self.host_name.clone(),
            accept_bench: self.accept_bench,
            require_sync_replication: self.require_sync_replication,
            ..self.dir.overrides()
        }
    }
}

/// Runs the host until SIGINT or SIGTERM.
pub async fn serve(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = HostConfig::load(args.dir.config.as_deref(), args.overrides())?;
    let dir = config.data_dir.clone();
    let configured_catalog = config.catalog.clone();
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let host = Host::start(config, shutdown).await?;
    // Stable lines on stdout for scripts and tests.
    println!("tally host listening on {}", host.addr());
    println!("tally admin listening on {}", host.admin_addr());
    let catalog = tally_host::catalog::resolve(&dir, configured_catalog.as_deref()).ok();
    print!(
        "{}",
        banner(
            &dir,
            host.addr(),
            host.admin_addr(),
            args.dev,
            catalog.as_ref()
        )
    );
    let mut listen = host.listen_changes();
    tokio::spawn(async move {
        while listen.changed().await.is_ok() {
            let addr = *listen.borrow_and_update();
            println!("tally host listening on {addr}");
        }
    });
    host.wait().await?;
    Ok(ExitCode::SUCCESS)
}

/// What a newcomer needs after `host run`: where clients connect, the dashboard's URL (with the
/// token as a URL fragment, which browsers never send, in dev mode only: a real host's stdout
/// may end up in a shared log), the key clients trust, and the first client's commands.
fn banner(
    dir: &Path,
    addr: SocketAddr,
    admin: SocketAddr,
    dev: bool,
    catalog: Option<&tally_core::Catalog>,
) -> String {
    use std::fmt::Write;
    let scheme = std::fs::read_to_string(dir.join(tally_host::paths::ADMIN_ADDR_FILE))
        .ok()
        .and_then(|u| u.split_once("://").map(|(s, _)| s.to_owned()))
        .unwrap_or_else(|| "http".to_owned());
    let token_file = dir.join(tally_host::paths::ADMIN_TOKEN_FILE);
    let trust = dir.join(tally_host::paths::AUTHORITY_PUB);
    // Clients on this machine reach a wildcard listener through loopback.
    let reach = if addr.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), addr.port())
    } else {
        addr
    };
    let mut out = String::new();
    let _ = writeln!(out, "\nActivation:  {addr} (clients connect to {reach})");
    if dev {
        let token = std::fs::read_to_string(&token_file).unwrap_or_default();
        let _ = writeln!(
            out,
            "Dashboard:   {scheme}://{admin}/#token={}",
            token.trim()
        );
    } else {
        let _ = writeln!(
            out,
            "Dashboard:   {scheme}://{admin}/ (token: {})",
            token_file.display()
        );
    }
    let _ = writeln!(out, "Metrics:     {scheme}://{admin}/metrics");
    let _ = writeln!(out, "Trust:       {}", trust.display());
    let server = catalog.and_then(|c| {
        c.editions()
            .iter()
            .find(|e| e.kind == tally_core::EditionKind::Server)
    });
    if let (true, Some(edition)) = (dev, server) {
        let _ = writeln!(
            out,
            "First client ({}, activates from {} machines):",
            edition.name, edition.threshold
        );
        let _ = writeln!(
            out,
            "  tally client --state-dir ./pc1 trust {}",
            trust.display()
        );
        let _ = writeln!(
            out,
            "  tally client --state-dir ./pc1 install-key {}",
            edition.setup_key
        );
        let _ = writeln!(
            out,
            "  tally client --state-dir ./pc1 activate --host {reach}"
        );
        let _ = writeln!(
            out,
            "  (count 1 of {}: repeat with ./pc2 ... ./pc{} to see \"activated\")",
            edition.threshold, edition.threshold
        );
    }
    out
}
