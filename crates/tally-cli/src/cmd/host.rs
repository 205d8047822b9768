//! `tally host`: run a host, set it up, look at its state.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use tally_authority::dir as authority_dir;
use tally_core::Catalog;
use tally_core::counting::CountTables;
use tally_core::host::{HostSession, Intervals};
use tally_core::keys::KeyGroup;
use tally_core::time::{Clock, SystemClock, Timestamp};
use tally_core::trust::{
    HostIdentity, armor, generate_key, labels, parse_authority_public, parse_certificate,
    parse_secret, to_hex,
};
use tally_server::{HostService, ServerConfig};
use tally_store::sqlite::{Durability, SqliteStore};
use tally_store::{RegistryPage, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cmd::catalog::{CatalogArg, load as load_catalog};
use crate::output::{Table, json};
use crate::paths;

/// `tally host ...`
#[derive(Subcommand)]
pub enum HostCommand {
    /// Serve activation requests (TCP, default port 1688).
    ///
    /// With --dev, the first start creates a local authority in the data directory, a top-group
    /// host key and a certificate, and writes DATA_DIR/authority.pub for clients to trust.
    Run(RunArgs),
    /// Create this host's key pair (host.key, host.pub) in the data directory.
    Init(DirArgs),
    /// Install the certificate the authority issued for this host's key.
    InstallCert {
        #[command(flatten)]
        dir: DirArgs,
        /// The certificate file from `tally authority certify`.
        file: PathBuf,
        /// The authority public key to check it against (copied to DATA_DIR/authority.pub).
        #[arg(long, value_name = "FILE")]
        trust: Option<PathBuf>,
    },
    /// Install the host key the vendor gave you (R22): host keys go on hosts only.
    InstallKey {
        #[command(flatten)]
        dir: DirArgs,
        /// The host key.
        key: String,
    },
    /// Activate the installed host key with the authority, once (R22): `--online URL`, or
    /// `--offline` (prints an installation ID to read out) then `--confirmation ID`.
    Activate {
        #[command(flatten)]
        dir: DirArgs,
        /// The authority's URL, e.g. https://activation.vendor.example.
        #[arg(long, value_name = "URL", conflicts_with_all = ["offline", "confirmation"])]
        online: Option<String>,
        /// Print the installation ID for activation by phone or file.
        #[arg(long, conflicts_with = "confirmation")]
        offline: bool,
        /// The confirmation ID the authority gave (digit groups, or a file holding them).
        #[arg(long, value_name = "ID")]
        confirmation: Option<String>,
        /// The authority public key to check the certificate against (kept as
        /// DATA_DIR/authority.pub) [default: DATA_DIR/authority.pub].
        #[arg(long, value_name = "FILE")]
        trust: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Catalogs: `tally host catalog import FILE` loads a newer catalog signed by the authority
    /// into this host (a running host picks it up within seconds, R24).
    #[command(subcommand)]
    Catalog(HostCatalogCommand),
    /// Show the certificate, the counts per pool (R2-R5) and the registry size (R6); with
    /// --target, of a remote host through its admin API.
    Status {
        #[command(flatten)]
        dir: DirArgs,
        #[command(flatten)]
        remote: crate::cmd::remote::RemoteArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A compliance report (R6): the clients served in a period, per edition, signed by this
    /// host's key (check it with `tally authority verify-report`).
    Report {
        #[command(flatten)]
        dir: DirArgs,
        #[command(flatten)]
        remote: crate::cmd::remote::RemoteArgs,
        /// First day, YYYY-MM-DD [default: 30 days ago].
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
        /// Day after the last, YYYY-MM-DD [default: tomorrow].
        #[arg(long, value_name = "DATE")]
        to: Option<String>,
        /// csv or json.
        #[arg(long, default_value = "json", value_parser = ["csv", "json"])]
        format: String,
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Copy the host database while the host runs (a consistent snapshot). To restore: stop
    /// the host, put the copy in place of DATA_DIR/tally.db (removing tally.db-wal and
    /// tally.db-shm), start the host.
    Backup {
        #[command(flatten)]
        dir: DirArgs,
        /// The backup file to create.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Check a host configuration file: every key is known and every value valid.
    Config {
        /// `check FILE`.
        #[arg(value_parser = ["check"])]
        action: String,
        /// The config file.
        file: PathBuf,
    },
    /// Change settings of the running host, live and kept across restarts (R26); with
    /// --target, of a remote host.
    Set(SetArgs),
    /// Query the event log (R27): 12290 activation requests, 12293/12294 DNS publishing,
    /// 1000 start, 1001 stop, 1002 setting changed, 1004 catalog loaded.
    Events {
        #[command(flatten)]
        dir: DirArgs,
        #[command(flatten)]
        remote: crate::cmd::remote::RemoteArgs,
        /// Only the last period, e.g. `2h`, `30m`, `7d` (a bare number is minutes).
        #[arg(long, value_name = "PERIOD")]
        since: Option<IntervalArg>,
        /// Only this event id.
        #[arg(long)]
        id: Option<u32>,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the clients this host has served (the registry, R6), most recent first.
    Clients {
        #[command(flatten)]
        dir: DirArgs,
        #[command(flatten)]
        remote: crate::cmd::remote::RemoteArgs,
        /// Only machines whose name contains this text.
        #[arg(long)]
        search: Option<String>,
        /// Rows to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Rows to skip.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `tally host catalog ...`
#[derive(Subcommand)]
pub enum HostCatalogCommand {
    /// Import a catalog signed by the authority (`tally authority sign-catalog`); it must be
    /// newer than the one in force.
    Import {
        #[command(flatten)]
        dir: DirArgs,
        /// The signed catalog file.
        file: PathBuf,
    },
}

/// The signed catalog imported into `dir`, verified against `dir/authority.pub`, if any.
pub fn imported_catalog(dir: &Path) -> anyhow::Result<Option<Catalog>> {
    let path = dir.join(paths::HOST_CATALOG);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let anchor = parse_authority_public(
        &std::fs::read_to_string(dir.join(paths::AUTHORITY_PUB)).with_context(|| {
            format!(
                "{} needs {} to verify it",
                path.display(),
                paths::AUTHORITY_PUB
            )
        })?,
    )?;
    Ok(Some(
        tally_core::catalog::signed::verify(&text, anchor.key())
            .with_context(|| format!("{}", path.display()))?,
    ))
}

/// Watches the imported catalog file and swaps it into the running host when it changes.
async fn watch_catalog(dir: PathBuf, service: Arc<HostService>, shutdown: CancellationToken) {
    let path = dir.join(paths::HOST_CATALOG);
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match imported_catalog(&dir) {
            Ok(Some(catalog)) => {
                info!(
                    version = catalog.version(),
                    editions = catalog.editions().len(),
                    "catalog loaded (R24)"
                );
                let data = serde_json::json!({ "version": catalog.version(), "editions": catalog.editions().len() });
                record_event(
                    service.store(),
                    EVENT_CATALOG_LOADED,
                    "info",
                    "catalog loaded",
                    data,
                )
                .await;
                service.set_catalog(Arc::new(catalog));
            }
            Ok(None) => {}
            Err(error) => {
                warn!(error = %format!("{error:#}"), "new catalog refused; still serving the previous one")
            }
        }
    }
}

/// `tally host set` options: each is optional; what is given changes.
#[derive(Args, Clone, Debug)]
pub struct SetArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    #[command(flatten)]
    pub remote: crate::cmd::remote::RemoteArgs,
    /// The activation port (R15); the host rebinds without dropping requests in flight.
    #[arg(long)]
    pub port: Option<u16>,
    /// The listen address, ADDR:PORT (rebinds the same way).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Retry interval sent to clients: minutes, or with a unit (`30s`, `2h`).
    #[arg(long, value_name = "MIN")]
    pub activation_interval: Option<IntervalArg>,
    /// Renewal interval sent to clients: minutes, or with a unit (`7d`).
    #[arg(long, value_name = "MIN")]
    pub renewal_interval: Option<IntervalArg>,
    /// DNS publishing (R17).
    #[arg(long, value_name = "on|off")]
    pub dns: Option<OnOff>,
    /// Process priority.
    #[arg(long, value_name = "low|normal")]
    pub priority: Option<PriorityArg>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// on or off.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// A process priority (R26).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PriorityArg {
    /// Nice 10: activation yields to other work.
    Low,
    /// Nice 0.
    Normal,
}

/// Applies `tally host set` through the admin API.
pub async fn set(args: SetArgs) -> anyhow::Result<ExitCode> {
    let mut change = serde_json::Map::new();
    if let Some(p) = args.port {
        change.insert("port".into(), p.into());
    }
    if let Some(l) = args.listen {
        change.insert("listen".into(), l.to_string().into());
    }
    if let Some(i) = args.activation_interval {
        change.insert("activation_interval_secs".into(), i.0.into());
    }
    if let Some(i) = args.renewal_interval {
        change.insert("renewal_interval_secs".into(), i.0.into());
    }
    if let Some(d) = args.dns {
        change.insert("dns_publish".into(), matches!(d, OnOff::On).into());
    }
    if let Some(p) = args.priority {
        change.insert(
            "priority".into(),
            if matches!(p, PriorityArg::Low) {
                "low"
            } else {
                "normal"
            }
            .into(),
        );
    }
    if change.is_empty() {
        bail!(
            "nothing to change: give --port, --listen, --activation-interval, --renewal-interval, --dns or --priority"
        );
    }
    let admin = crate::cmd::remote::Admin::resolve(&args.remote, &args.dir.resolve())?;
    let settings = admin
        .patch("settings", &serde_json::Value::Object(change))
        .await?;
    if args.json {
        json(&settings)?;
    } else {
        println!(
            "Settings in force: listen {}, activation {} min, renewal {} min, DNS {}, priority {}",
            settings["listen"].as_str().unwrap_or("?"),
            settings["activation_interval_secs"].as_u64().unwrap_or(0) / 60,
            settings["renewal_interval_secs"].as_u64().unwrap_or(0) / 60,
            if settings["dns_publish"] == true {
                "on"
            } else {
                "off"
            },
            settings["priority"].as_str().unwrap_or("?"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The data directory option.
#[derive(Args, Clone, Debug)]
pub struct DirArgs {
    /// Host data directory [default: ~/.local/share/tally/host].
    #[arg(long, env = "TALLY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DirArgs {
    fn resolve(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(paths::default_host_dir)
    }
}

/// `tally host run` options. Each can also be set in the config file; flags win.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Config file (TOML); see docs/OPERATIONS.md for the keys.
    #[arg(long, env = "TALLY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Create a local authority and certify this host on first start (for trying Tally out).
    #[arg(long)]
    dev: bool,
    /// Address and port to listen on [default: 0.0.0.0:1688].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    dir: DirArgs,
    #[command(flatten)]
    catalog: CatalogArg,
    /// Retry interval after a failure, sent to clients (R8, R9): minutes, or with a unit
    /// (`30s`, `15m`, `2h`, `7d`) [default: 120].
    #[arg(long, value_name = "MIN")]
    activation_interval: Option<IntervalArg>,
    /// Renewal interval, sent to clients (R8, R9): minutes, or with a unit [default: 10080].
    #[arg(long, value_name = "MIN")]
    renewal_interval: Option<IntervalArg>,
    /// Connections served at once [default: 1024].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Commit durability: `full` survives power loss, `normal` only a process crash [default: full].
    #[arg(long, value_name = "MODE")]
    durability: Option<DurabilityArg>,
    /// Do not publish DNS records even if the config file has a `[dns]` section (R17).
    #[arg(long)]
    no_dns_publish: bool,
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
}

#[derive(Clone, Copy, Debug, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
enum DurabilityArg {
    Full,
    Normal,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 1688))
}

fn default_read_timeout_secs() -> u64 {
    10
}

fn default_idle_timeout_secs() -> u64 {
    30
}

/// The host config file. Every key is optional; flags override the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFileConfig {
    /// Data directory (keys, certificate, database).
    data_dir: Option<PathBuf>,
    /// Listen address, e.g. "0.0.0.0:1688" (R15).
    listen: Option<SocketAddr>,
    /// Catalog file; the demo catalog when absent.
    catalog: Option<PathBuf>,
    /// Retry interval after a failure (R8, R9): minutes, or a string with a unit ("30s").
    activation_interval: Option<IntervalArg>,
    /// Renewal interval (R8, R9): minutes, or a string with a unit ("7d").
    renewal_interval: Option<IntervalArg>,
    /// Connections served at once.
    max_connections: Option<usize>,
    /// Seconds allowed to receive one request.
    #[serde(default = "default_read_timeout_secs")]
    read_timeout_secs: u64,
    /// Seconds a connection may stay idle.
    #[serde(default = "default_idle_timeout_secs")]
    idle_timeout_secs: u64,
    /// "full" or "normal".
    durability: Option<DurabilityArg>,
    /// Address of the admin API, metrics and dashboard (loopback by default).
    admin_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) to serve the admin API over TLS.
    admin_tls_cert: Option<PathBuf>,
    /// Private key (PEM) for `admin_tls_cert`.
    admin_tls_key: Option<PathBuf>,
    /// Days the event log keeps events (R27) so it cannot fill the disk.
    #[serde(default = "default_event_retention_days")]
    event_retention_days: u32,
    /// DNS publishing (R17, R18); absent: not published (records can be made by hand).
    dns: Option<DnsConfig>,
}

fn default_event_retention_days() -> u32 {
    90
}

/// Records one of the host's own events (and logs failures to record it).
pub async fn record_event(
    store: &Arc<dyn Store>,
    event_id: u32,
    level: &str,
    message: &str,
    data: serde_json::Value,
) {
    let event = tally_store::Event {
        at: SystemClock.now(),
        event_id,
        level: level.to_owned(),
        message: message.to_owned(),
        data,
    };
    if let Err(error) = store.record_events(vec![event]).await {
        warn!(%error, event_id, "cannot record an event");
    }
}

/// R27 retention: prunes old events now and then once a day.
async fn prune_events_loop(store: Arc<dyn Store>, days: u32, shutdown: CancellationToken) {
    loop {
        let before = SystemClock.now().plus_days(-i64::from(days));
        match store.prune_events(before).await {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, retention_days = days, "old events pruned"),
            Err(error) => warn!(%error, "cannot prune old events"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(86_400)) => {}
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_label() -> String {
    tally_dns::DEFAULT_LABEL.to_owned()
}

fn default_ttl() -> u32 {
    300
}

fn default_refresh_secs() -> u64 {
    900
}

/// The `[dns]` section of the host config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsConfig {
    /// Publish the SRV record (R17); `--no-dns-publish` turns it off.
    #[serde(default = "default_true")]
    publish: bool,
    /// The DNS server that accepts updates for the zones, ADDR:PORT.
    server: SocketAddr,
    /// TSIG key file in BIND `tsig-keygen` format (hmac-sha256).
    key_file: PathBuf,
    /// This host's FQDN: the SRV target.
    fqdn: String,
    /// Zone of the FQDN's A/AAAA records [default: the FQDN's parent domain].
    address_zone: Option<String>,
    /// Addresses published for the FQDN [default: the listen address unless 0.0.0.0/::].
    addresses: Option<Vec<std::net::IpAddr>>,
    /// SRV label.
    #[serde(default = "default_label")]
    label: String,
    /// TTL of the records, seconds.
    #[serde(default = "default_ttl")]
    ttl: u32,
    /// Seconds between republishing.
    #[serde(default = "default_refresh_secs")]
    refresh_secs: u64,
    /// Domains to publish into, each with optional priority and weight; replaces the default
    /// (the FQDN's own domain).
    #[serde(default)]
    domains: Vec<tally_dns::publish::Target>,
}

/// Event id: the host started.
pub const EVENT_STARTED: u32 = 1000;
/// Event id: the host stopped.
pub const EVENT_STOPPED: u32 = 1001;
/// Event id: a host key was installed or the host activated with the authority.
pub const EVENT_KEY: u32 = 1003;
/// Event id: a newer catalog was loaded (R24).
pub const EVENT_CATALOG_LOADED: u32 = 1004;

/// File where the host keeps its last DNS publishing result (for `host status`).
pub const DNS_STATUS_FILE: &str = "dns-status.json";

impl DnsConfig {
    fn publication(
        &self,
        config_dir: &Path,
        listen: SocketAddr,
    ) -> anyhow::Result<tally_dns::publish::Publication> {
        let key_path = if self.key_file.is_absolute() {
            self.key_file.clone()
        } else {
            config_dir.join(&self.key_file)
        };
        let key_text = std::fs::read_to_string(&key_path)
            .with_context(|| format!("cannot read the TSIG key file {}", key_path.display()))?;
        let key = tally_dns::tsig::TsigKey::parse_bind(&key_text)
            .with_context(|| format!("{}", key_path.display()))?;
        let fqdn = self.fqdn.trim_end_matches('.').to_owned();
        let parent = fqdn.split_once('.').map(|(_, p)| p.to_owned());
        let targets = if self.domains.is_empty() {
            let domain = self
                .address_zone
                .clone()
                .or(parent)
                .with_context(|| format!("dns.fqdn '{fqdn}' has no domain"))?;
            vec![tally_dns::publish::Target {
                domain,
                priority: 0,
                weight: 10,
            }]
        } else {
            self.domains.clone()
        };
        let addresses = match &self.addresses {
            Some(a) => a.clone(),
            None if listen.ip().is_unspecified() => Vec::new(),
            None => vec![listen.ip()],
        };
        Ok(tally_dns::publish::Publication {
            server: self.server,
            key,
            label: self.label.clone(),
            fqdn,
            address_zone: self.address_zone.clone(),
            addresses,
            port: listen.port(),
            ttl: self.ttl,
            targets,
            timeout: Duration::from_secs(5),
        })
    }
}

async fn publish_loop(
    mut publication: tally_dns::publish::Publication,
    refresh: Duration,
    status_path: PathBuf,
    store: Arc<dyn Store>,
    mut control: tokio::sync::watch::Receiver<crate::cmd::live::DnsControl>,
    shutdown: CancellationToken,
) {
    loop {
        let ctl = *control.borrow_and_update();
        if !ctl.enabled {
            // R17: publishing turned off; the records stay until their TTL or an admin removes them.
            let _ = std::fs::write(
                &status_path,
                serde_json::json!({ "enabled": false }).to_string(),
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = control.changed() => if r.is_err() { return } else { continue },
            }
        }
        // R17: republish at once when the port changes.
        publication.port = ctl.port;
        let results = publication.publish().await;
        for r in &results {
            if r.ok {
                // R17: event 12294 on success.
                info!(
                    event_id = tally_dns::EVENT_PUBLISH_OK,
                    domain = %r.domain,
                    record = %r.record,
                    target = %publication.fqdn,
                    port = publication.port,
                    "DNS SRV record published"
                );
            } else {
                // R17: event 12293 on failure, with the DNS error.
                warn!(
                    event_id = tally_dns::EVENT_PUBLISH_FAILED,
                    domain = %r.domain,
                    record = %r.record,
                    error = r.error.as_deref().unwrap_or("unknown"),
                    "DNS publishing failed"
                );
            }
        }
        for r in &results {
            let (id, level, message) = if r.ok {
                (
                    tally_dns::EVENT_PUBLISH_OK,
                    "info",
                    "DNS SRV record published",
                )
            } else {
                (
                    tally_dns::EVENT_PUBLISH_FAILED,
                    "warning",
                    "DNS publishing failed",
                )
            };
            record_event(
                &store,
                id,
                level,
                message,
                serde_json::to_value(r).unwrap_or_default(),
            )
            .await;
        }
        let status = serde_json::json!({
            "enabled": true,
            "server": publication.server,
            "fqdn": publication.fqdn,
            "port": publication.port,
            "last_attempt": SystemClock.now(),
            "ok": results.iter().all(|r| r.ok),
            "results": results,
        });
        if let Err(error) = std::fs::write(&status_path, status.to_string()) {
            warn!(%error, path = %status_path.display(), "cannot record the DNS publishing state");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(refresh) => {}
            r = control.changed() => if r.is_err() { return },
        }
    }
}

fn read_config(path: Option<&Path>) -> anyhow::Result<HostFileConfig> {
    let Some(path) = path else {
        return Ok(toml::from_str("")?);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config {} is not valid", path.display()))
}

/// An interval: a bare number is minutes (as R8 states them); `s`, `m`, `h`, `d` suffixes are
/// accepted. Between 1 second and 1 year.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntervalArg(pub u32);

impl std::str::FromStr for IntervalArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => s.split_at(i),
            None => (s, "m"),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not an interval (e.g. 120, 30s, 15m, 2h, 7d)"))?;
        let secs = match unit.trim() {
            "s" => n,
            "m" | "min" => n * 60,
            "h" => n * 3600,
            "d" => n * 86_400,
            u => return Err(format!("unknown unit '{u}' in '{s}' (use s, m, h or d)")),
        };
        if !(1..=365 * 86_400).contains(&secs) {
            return Err(format!(
                "interval '{s}' must be between 1 second and 1 year"
            ));
        }
        Ok(Self(secs as u32))
    }
}

impl<'de> Deserialize<'de> for IntervalArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Minutes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Minutes(m) => m.to_string().parse(),
            Raw::Text(t) => t.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// Creates the host key pair in `dir` unless it exists. Returns whether it was created.
fn ensure_host_key(dir: &Path) -> anyhow::Result<bool> {
    let secret = dir.join(paths::HOST_SECRET);
    if secret.exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = generate_key();
    authority_dir::write_private(&secret, &armor(labels::HOST_SECRET, &key.to_bytes()))
        .with_context(|| format!("cannot write {}", secret.display()))?;
    std::fs::write(
        dir.join(paths::HOST_PUBLIC),
        armor(labels::HOST_PUBLIC, key.verifying_key().as_bytes()),
    )?;
    Ok(true)
}

/// Dev mode: a local authority, a top-group host key for the catalog's newest generation, a
/// certificate, and `authority.pub` for clients. Does nothing if a certificate exists.
pub fn dev_bootstrap(dir: &Path, catalog: &Catalog, now: Timestamp) -> anyhow::Result<()> {
    ensure_host_key(dir)?;
    if dir.join(paths::HOST_CERT).exists() {
        return Ok(());
    }
    let auth_dir = dir.join(paths::DEV_AUTHORITY_DIR);
    let authority = match authority_dir::load(&auth_dir) {
        Ok(a) => a,
        Err(tally_authority::AuthorityError::Missing(_)) => authority_dir::init(&auth_dir)?.0,
        Err(e) => return Err(e.into()),
    };
    let host_key = authority.issue_host_key(KeyGroup::ServerC, catalog.newest_generation())?;
    let secret = parse_secret(
        labels::HOST_SECRET,
        &std::fs::read_to_string(dir.join(paths::HOST_SECRET))?,
    )?;
    let cert = authority.certify(host_key, &secret.verifying_key(), now)?;
    std::fs::write(
        dir.join(paths::AUTHORITY_PUB),
        authority_dir::public_file_text(&authority),
    )?;
    std::fs::write(
        dir.join(paths::HOST_CERT),
        armor(labels::HOST_CERTIFICATE, &cert.to_bytes()),
    )?;
    info!(
        data_dir = %dir.display(),
        host_key = %host_key.partial(),
        "dev mode: created a local authority and certified this host for server-c"
    );
    Ok(())
}

/// Loads the host's key and certificate from `dir`.
pub fn load_identity(dir: &Path) -> anyhow::Result<HostIdentity> {
    let secret_path = dir.join(paths::HOST_SECRET);
    let cert_path = dir.join(paths::HOST_CERT);
    if !secret_path.exists() || !cert_path.exists() {
        bail!(
            "no host identity in {}: run `tally host run --dev` to try Tally, or `tally host init` and \
             have the authority certify host.pub (`tally authority certify`), then `tally host install-cert`",
            dir.display()
        );
    }
    let secret = parse_secret(labels::HOST_SECRET, &std::fs::read_to_string(&secret_path)?)
        .with_context(|| format!("{}", secret_path.display()))?;
    let cert = parse_certificate(&std::fs::read_to_string(&cert_path)?)
        .with_context(|| format!("{}", cert_path.display()))?;
    HostIdentity::new(secret, cert).with_context(|| format!("{}", cert_path.display()))
}

/// Opens the host database in `dir`.
pub fn open_store(dir: &Path, durability: Durability) -> anyhow::Result<SqliteStore> {
    Ok(SqliteStore::open(&dir.join(paths::HOST_DB), durability)?)
}

/// Runs a host command.
pub async fn run(cmd: HostCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        HostCommand::Run(args) => serve(args).await,
        HostCommand::Init(dir) => {
            let dir = dir.resolve();
            if ensure_host_key(&dir)? {
                println!("Host key pair created in {}.", dir.display());
            } else {
                println!("This host already has a key pair in {}.", dir.display());
            }
            println!(
                "Next: have the authority certify it:\n  tally authority certify --dir AUTHORITY_DIR --host-key KEY --host-pub {} --out host.cert\n\
                 then: tally host install-cert --data-dir {} host.cert --trust authority.pub",
                dir.join(paths::HOST_PUBLIC).display(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        HostCommand::InstallCert { dir, file, trust } => {
            let dir = dir.resolve();
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let cert = parse_certificate(&text).with_context(|| format!("{}", file.display()))?;
            let secret_path = dir.join(paths::HOST_SECRET);
            let secret = parse_secret(
                labels::HOST_SECRET,
                &std::fs::read_to_string(&secret_path).with_context(|| {
                    format!(
                        "no host key in {}: run `tally host init` first",
                        dir.display()
                    )
                })?,
            )?;
            HostIdentity::new(secret, cert.clone())
                .context("this certificate is not for this host")?;
            if let Some(trust) = trust {
                let anchor_text = std::fs::read_to_string(&trust)?;
                let anchor = parse_authority_public(&anchor_text)?;
                anchor
                    .verify_certificate(&cert, SystemClock.now())
                    .context("the certificate does not verify under that authority key")?;
                std::fs::write(dir.join(paths::AUTHORITY_PUB), anchor_text)?;
            }
            std::fs::write(dir.join(paths::HOST_CERT), text)?;
            println!(
                "Certificate installed. Start the host with: tally host run --data-dir {}",
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        HostCommand::Status {
            dir,
            remote,
            json: as_json,
        } if remote.target.is_some() => {
            let status = crate::cmd::remote::Admin::resolve(&remote, &dir.resolve())?
                .get("status")
                .await?;
            if as_json {
                json(&status)?;
            } else {
                print_remote_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        HostCommand::Status {
            dir, json: as_json, ..
        } => status(&dir.resolve(), as_json).await,
        HostCommand::Set(args) => set(args).await,
        HostCommand::Report {
            dir,
            remote,
            from,
            to,
            format,
            out,
        } => {
            let dir = dir.resolve();
            let now = SystemClock.now();
            let date = |d: Option<String>, default: Timestamp| -> anyhow::Result<Timestamp> {
                match d {
                    Some(d) => tally_admin::report::date(&d).map_err(|e| anyhow::anyhow!(e)),
                    None => Ok(default),
                }
            };
            let (from, to) = (date(from, now.plus_days(-30))?, date(to, now.plus_days(1))?);
            let text = if remote.target.is_some() {
                let admin = crate::cmd::remote::Admin::resolve(&remote, &dir)?;
                let q = format!(
                    "report?from={}&to={}&format={format}",
                    from.millis(),
                    to.millis()
                );
                admin.get_text(&q).await?
            } else {
                let identity = load_identity(&dir)?;
                let catalog = imported_catalog(&dir)?.unwrap_or_else(Catalog::demo);
                let store = open_store(&dir, Durability::Full)?;
                let clients = tally_admin::report::clients_in_period(&store, from, to).await?;
                tally_admin::report::build(&identity, &catalog, &clients, from, to, format == "csv")
                    .map_err(|e| anyhow::anyhow!(e))?
            };
            match &out {
                Some(p) => {
                    std::fs::write(p, &text)
                        .with_context(|| format!("cannot write {}", p.display()))?;
                    eprintln!("Report written to {}.", p.display());
                }
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        HostCommand::Backup { dir, out } => {
            if out.exists() {
                bail!("{} exists; choose a new file", out.display());
            }
            open_store(&dir.resolve(), Durability::Full)?
                .backup_to(&out)
                .await?;
            println!("Database copied to {}.", out.display());
            Ok(ExitCode::SUCCESS)
        }
        HostCommand::Config { file, .. } => {
            let config = read_config(Some(&file))?;
            if let Some(dns) = &config.dns {
                let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
                dns.publication(&dir, config.listen.unwrap_or_else(default_listen))
                    .context("the [dns] section is not usable")?;
            }
            println!("{}: valid", file.display());
            Ok(ExitCode::SUCCESS)
        }
        HostCommand::Events {
            dir,
            remote,
            since,
            id,
            limit,
            json: as_json,
        } if remote.target.is_some() => {
            let mut q = format!("events?limit={limit}");
            if let Some(s) = since {
                q.push_str(&format!("&since_secs={}", s.0));
            }
            if let Some(i) = id {
                q.push_str(&format!("&id={i}"));
            }
            let events = crate::cmd::remote::Admin::resolve(&remote, &dir.resolve())?
                .get(&q)
                .await?;
            if as_json {
                json(&events)?;
            } else {
                for e in events.as_array().into_iter().flatten() {
                    println!(
                        "{}  {:>5}  {}  {}",
                        e["at"],
                        e["event_id"],
                        e["message"].as_str().unwrap_or(""),
                        e["data"]
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        HostCommand::Events {
            dir,
            since,
            id,
            limit,
            json: as_json,
            ..
        } => {
            let store = open_store(&dir.resolve(), Durability::Full)?;
            let since =
                since.map(|p| Timestamp(SystemClock.now().millis() - i64::from(p.0) * 1000));
            let events = store
                .events(tally_store::EventQuery {
                    since,
                    event_id: id,
                    limit,
                })
                .await?;
            if as_json {
                json(&events)?;
            } else {
                for e in &events {
                    println!(
                        "{}  {:>5}  {:<7}  {}  {}",
                        e.at, e.event_id, e.level, e.message, e.data
                    );
                }
                println!("{} event(s)", events.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        HostCommand::Catalog(HostCatalogCommand::Import { dir, file }) => {
            let dir = dir.resolve();
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let anchor = parse_authority_public(
                &std::fs::read_to_string(dir.join(paths::AUTHORITY_PUB)).context(
                    "this host has no authority key (DATA_DIR/authority.pub): activate it first",
                )?,
            )?;
            let catalog = tally_core::catalog::signed::verify(&text, anchor.key())
                .with_context(|| format!("{} refused", file.display()))?;
            let current = imported_catalog(&dir)?.unwrap_or_else(Catalog::demo);
            if catalog.version() <= current.version() {
                bail!(
                    "catalog version {} is not newer than the one in force (version {})",
                    catalog.version(),
                    current.version()
                );
            }
            let tmp = dir.join(format!(".{}.tmp", paths::HOST_CATALOG));
            std::fs::write(&tmp, &text)?;
            std::fs::rename(&tmp, dir.join(paths::HOST_CATALOG))?;
            println!(
                "Catalog '{}' version {} imported ({} editions); a running host loads it within seconds.",
                catalog.name(),
                catalog.version(),
                catalog.editions().len()
            );
            Ok(ExitCode::SUCCESS)
        }
        HostCommand::InstallKey { dir, key } => {
            let dir = dir.resolve();
            let key: tally_core::ProductKey =
                key.trim().parse().context("that is not a valid key")?;
            match key.kind() {
                tally_core::KeyKind::Host => {}
                tally_core::KeyKind::Setup => bail!(
                    "this is an edition's setup key: it belongs on clients (`tally client install-key`), not on a host"
                ),
                tally_core::KeyKind::Mak => bail!(
                    "this is a MAK: it activates clients directly with the vendor (`tally client install-key`); \
                     a host needs a host key"
                ),
            }
            let fields = key.host_fields()?;
            ensure_host_key(&dir)?;
            std::fs::write(dir.join(paths::HOST_PRODUCT_KEY), format!("{key}\n"))?;
            let store: Arc<dyn Store> = Arc::new(open_store(&dir, Durability::Full)?);
            let data = serde_json::json!({ "key": key.partial(), "group": fields.group.name(), "generation": fields.generation });
            record_event(&store, EVENT_KEY, "info", "host key installed", data).await;
            println!(
                "Host key for {} generation {} installed (ends {}). Activate it once: \
                 tally host activate --online URL   or   tally host activate --offline",
                fields.group,
                fields.generation,
                key.partial()
            );
            Ok(ExitCode::SUCCESS)
        }
        HostCommand::Activate {
            dir,
            online,
            offline,
            confirmation,
            trust,
            json: as_json,
        } => {
            activate(
                &dir.resolve(),
                online,
                offline,
                confirmation,
                trust,
                as_json,
            )
            .await
        }
        HostCommand::Clients {
            dir,
            remote,
            search,
            limit,
            offset,
            json: as_json,
        } if remote.target.is_some() => {
            let mut q = format!("clients?offset={offset}&limit={}", limit.clamp(1, 500));
            if let Some(text) = &search {
                q.push_str(&format!(
                    "&q={}",
                    text.replace('&', "%26").replace(' ', "%20")
                ));
            }
            let page = crate::cmd::remote::Admin::resolve(&remote, &dir.resolve())?
                .get(&q)
                .await?;
            if as_json {
                json(&page)?;
            } else {
                for c in page["clients"].as_array().into_iter().flatten() {
                    println!(
                        "{}  {}  last seen {}  count {}  activated {}",
                        c["machine_name"].as_str().unwrap_or("?"),
                        c["cmid"].as_str().unwrap_or("?"),
                        c["last_seen"],
                        c["last_count"],
                        c["activated"]
                    );
                }
                println!("{} clients in total", page["total"]);
            }
            Ok(ExitCode::SUCCESS)
        }
        HostCommand::Clients {
            dir,
            search,
            limit,
            offset,
            json: as_json,
            ..
        } => {
            let data_dir = dir.resolve();
            let store = open_store(&data_dir, Durability::Full)?;
            let total = store.registry_count(search.clone()).await?;
            let rows = store
                .registry(RegistryPage {
                    search,
                    offset,
                    limit,
                    ..RegistryPage::default()
                })
                .await?;
            if as_json {
                json(&serde_json::json!({ "total": total, "offset": offset, "clients": rows }))?;
            } else {
                let mut t = Table::new(&[
                    "MACHINE",
                    "CMID",
                    "EDITION",
                    "LAST SEEN",
                    "COUNT",
                    "ACTIVATED",
                    "REQUESTS",
                ]);
                let catalog = imported_catalog(&data_dir)?.unwrap_or_else(Catalog::demo);
                for r in &rows {
                    t.row(vec![
                        r.machine_name.clone(),
                        r.cmid.to_string(),
                        catalog
                            .edition(r.sku)
                            .map_or_else(|| r.sku.to_string(), |e| e.name.clone()),
                        r.last_seen.to_string(),
                        r.last_count.to_string(),
                        if r.activated { "yes" } else { "no" }.to_owned(),
                        r.requests.to_string(),
                    ]);
                }
                print!("{}", t.render());
                println!("{} of {total} clients shown", rows.len());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// This host's hardware id for the authority: 5 bytes of SHA-256 of its fingerprint (R12, R23).
fn hardware_id() -> [u8; tally_authority::service::HARDWARE_ID_BYTES] {
    let hw = tally_client::hardware::probe();
    let digest = tally_core::trust::sha256(&serde_json::to_vec(&hw).unwrap_or_default());
    let mut id = [0u8; tally_authority::service::HARDWARE_ID_BYTES];
    id.copy_from_slice(&digest[..tally_authority::service::HARDWARE_ID_BYTES]);
    id
}

fn installed_host_key(dir: &Path) -> anyhow::Result<tally_core::ProductKey> {
    let text = std::fs::read_to_string(dir.join(paths::HOST_PRODUCT_KEY)).with_context(|| {
        format!(
            "no host key installed in {}: run `tally host install-key KEY` first",
            dir.display()
        )
    })?;
    Ok(text.trim().parse()?)
}

fn host_secret(dir: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let path = dir.join(paths::HOST_SECRET);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(parse_secret(labels::HOST_SECRET, &text)?)
}

/// Installs a certificate after checking it against the trusted authority key.
fn install_certificate(
    dir: &Path,
    cert: &tally_proto::HostCertificate,
    anchor_text: &str,
) -> anyhow::Result<tally_core::trust::VerifiedHost> {
    let anchor = parse_authority_public(anchor_text)?;
    let verified = anchor
        .verify_certificate(cert, SystemClock.now())
        .context("the certificate does not verify under the authority key")?;
    HostIdentity::new(host_secret(dir)?, cert.clone())
        .context("this certificate is not for this host")?;
    std::fs::write(dir.join(paths::AUTHORITY_PUB), anchor_text)?;
    std::fs::write(
        dir.join(paths::HOST_CERT),
        armor(labels::HOST_CERTIFICATE, &cert.to_bytes()),
    )?;
    Ok(verified)
}

async fn activate(
    dir: &Path,
    online: Option<String>,
    offline: bool,
    confirmation: Option<String>,
    trust: Option<PathBuf>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let key = installed_host_key(dir)?;
    ensure_host_key(dir)?;
    let public = host_secret(dir)?.verifying_key();
    let trust_text = match &trust {
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        ),
        None => std::fs::read_to_string(dir.join(paths::AUTHORITY_PUB)).ok(),
    };
    if offline {
        let groups = tally_authority::service::installation_id(key, &public, &hardware_id());
        let file = dir.join(paths::INSTALLATION_ID);
        std::fs::write(&file, format!("{}\n", groups.join(" ")))?;
        if as_json {
            json(
                &serde_json::json!({ "installation_id": groups.join(" "), "groups": groups, "file": file }),
            )?;
        } else {
            println!(
                "Installation ID ({} groups; also in {}):",
                groups.len(),
                file.display()
            );
            for line in groups.chunks(6) {
                println!("  {}", line.join(" "));
            }
            println!(
                "Give it to the vendor; then: tally host activate --confirmation \"DIGITS\" --trust authority.pub"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (cert, anchor_text) = if let Some(confirmation) = confirmation {
        let anchor_text = trust_text
            .context("offline activation needs the authority's public key: pass --trust FILE")?;
        let anchor = parse_authority_public(&anchor_text)?;
        let text = crate::cmd::authority::text_or_file(&confirmation)?;
        let cert = tally_authority::service::certificate_from_confirmation(
            &text,
            key,
            &public,
            anchor.key(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        (cert, anchor_text)
    } else if let Some(url) = online {
        let base = url.trim_end_matches('/');
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let anchor_text = match trust_text {
            Some(t) => t,
            None => {
                let info: serde_json::Value = client
                    .get(format!("{base}/v1/authority"))
                    .send()
                    .await
                    .with_context(|| format!("cannot reach the authority at {base}"))?
                    .json()
                    .await?;
                let text = info["public_key_file"]
                    .as_str()
                    .context("the authority did not send its key")?
                    .to_owned();
                warn!(authority_id = %info["authority_id"], "no --trust given: trusting the key the authority sent; check its id with your vendor");
                text
            }
        };
        let body = serde_json::json!({
            "host_key": key.to_string(),
            "host_public_key": to_hex(public.as_bytes()),
            "hardware_id": to_hex(&hardware_id()),
        });
        let resp = client
            .post(format!("{base}/v1/host-activations"))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("cannot reach the authority at {base}"))?;
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.context("the authority sent no JSON")?;
        if !status.is_success() {
            if as_json {
                json(&v)?;
            }
            bail!(
                "the authority refused ({}): {}",
                v["error"].as_str().unwrap_or("error"),
                v["message"].as_str().unwrap_or("no message")
            );
        }
        let cert = parse_certificate(
            v["certificate"]
                .as_str()
                .context("no certificate in the answer")?,
        )?;
        (cert, anchor_text)
    } else {
        bail!("say how: --online URL, --offline, or --confirmation ID");
    };
    let verified = install_certificate(dir, &cert, &anchor_text)?;
    let cov = verified.coverage();
    let store: Arc<dyn Store> = Arc::new(open_store(dir, Durability::Full)?);
    let data = serde_json::json!({ "key": key.partial(), "group": cov.group.name(), "generation": cov.generation });
    record_event(
        &store,
        EVENT_KEY,
        "info",
        "host activated with the authority",
        data,
    )
    .await;
    if as_json {
        json(
            &serde_json::json!({ "activated": true, "key_group": cov.group.name(), "generation": cov.generation }),
        )?;
    } else {
        println!(
            "Host activated for {} generation {}. Start it with: tally host run --data-dir {}",
            cov.group,
            cov.generation,
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_remote_status(s: &serde_json::Value) {
    println!(
        "Certificate: {} generation {}; catalog {} v{}",
        s["certificate"]["key_group"].as_str().unwrap_or("?"),
        s["certificate"]["generation"],
        s["catalog"]["name"].as_str().unwrap_or("?"),
        s["catalog"]["version"]
    );
    let mut t = Table::new(&["POOL", "COUNT", "TABLE SIZE", "THRESHOLDS"]);
    for p in s["pools"].as_array().into_iter().flatten() {
        t.row(vec![
            p["name"].as_str().unwrap_or("?").to_owned(),
            p["count"].to_string(),
            p["capacity"].to_string(),
            format!("{}/{}", p["server_threshold"], p["client_threshold"]),
        ]);
    }
    print!("{}", t.render());
    let st = &s["settings"];
    println!(
        "Listen {}; intervals {} / {} min; DNS {}; priority {}; {} clients in registry",
        st["listen"].as_str().unwrap_or("?"),
        st["activation_interval_secs"].as_u64().unwrap_or(0) / 60,
        st["renewal_interval_secs"].as_u64().unwrap_or(0) / 60,
        if st["dns_publish"] == true {
            "on"
        } else {
            "off"
        },
        st["priority"].as_str().unwrap_or("?"),
        s["registry_clients"]
    );
}

#[derive(Serialize)]
struct PoolStatus {
    pool: uuid::Uuid,
    name: String,
    count: u32,
    capacity: u32,
}

async fn status(dir: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let identity = load_identity(dir)?;
    let store = open_store(dir, Durability::Full)?;
    let now = SystemClock.now();
    let tables = CountTables::from_snapshots(store.load_tables().await?);
    let catalog = imported_catalog(dir)?.unwrap_or_else(Catalog::demo);
    let pools: Vec<PoolStatus> = tables
        .summary(now)
        .into_iter()
        .map(|(pool, count, capacity)| PoolStatus {
            pool,
            name: catalog
                .pool(pool)
                .map_or_else(|| pool.to_string(), |p| p.name.clone()),
            count,
            capacity,
        })
        .collect();
    let cert = identity.certificate();
    let cov = identity.coverage();
    let not_after = Timestamp(cert.body.not_after.saturating_mul(1000));
    let clients = store.registry_len().await?;
    let dns: serde_json::Value = std::fs::read(dir.join(DNS_STATUS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({ "enabled": false }));
    if as_json {
        json(&serde_json::json!({
            "data_dir": dir,
            "certificate": {
                "fingerprint": to_hex(&identity.fingerprint()),
                "key_group": cov.group.name(),
                "generation": cov.generation,
                "key_serial": cert.body.key_serial,
                "not_after": not_after,
                "not_after_rfc3339": not_after.to_rfc3339(),
            },
            "pools": pools,
            "registry_clients": clients,
            "dns": dns,
        }))?;
    } else {
        println!("Host data: {}", dir.display());
        println!(
            "Certificate: {} generation {}, valid until {}, fingerprint {}",
            cov.group,
            cov.generation,
            not_after,
            &to_hex(&identity.fingerprint())[..16]
        );
        let mut t = Table::new(&["POOL", "COUNT", "TABLE SIZE"]);
        for p in &pools {
            t.row(vec![
                p.name.clone(),
                p.count.to_string(),
                p.capacity.to_string(),
            ]);
        }
        print!("{}", t.render());
        println!("Clients in registry: {clients}");
        match dns.get("results").and_then(|r| r.as_array()) {
            Some(results) => {
                for r in results {
                    println!(
                        "DNS: {} {}{}",
                        r["record"].as_str().unwrap_or("?"),
                        if r["ok"] == true {
                            "published"
                        } else {
                            "FAILED: "
                        },
                        r["error"].as_str().unwrap_or("")
                    );
                }
            }
            None => println!("DNS: not publishing"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds a ready host service for `dir`.
pub async fn build_service(
    dir: &Path,
    catalog: Catalog,
    intervals: Intervals,
    durability: Durability,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<HostService>> {
    let identity = load_identity(dir)?;
    let session = Arc::new(HostSession::new(Arc::new(catalog), identity, intervals));
    let store: Arc<dyn Store> = Arc::new(open_store(dir, durability)?);
    Ok(Arc::new(HostService::open(session, store, clock).await?))
}

async fn serve(args: RunArgs) -> anyhow::Result<ExitCode> {
    let file = read_config(args.config.as_deref())?;
    let dir = args
        .dir
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(paths::default_host_dir);
    // R24: a signed catalog imported into the data directory wins over the configured one.
    let catalog = match imported_catalog(&dir)? {
        Some(c) => c,
        None => load_catalog(args.catalog.catalog.as_deref().or(file.catalog.as_deref()))?,
    };
    let defaults = Intervals::default();
    let intervals = Intervals {
        activation_secs: args
            .activation_interval
            .or(file.activation_interval)
            .map_or(defaults.activation_secs, |i| i.0),
        renewal_secs: args
            .renewal_interval
            .or(file.renewal_interval)
            .map_or(defaults.renewal_secs, |i| i.0),
    };
    let durability = match args
        .durability
        .or(file.durability)
        .unwrap_or(DurabilityArg::Full)
    {
        DurabilityArg::Full => Durability::Full,
        DurabilityArg::Normal => Durability::Normal,
    };
    // R26: settings changed live persist and win over the config file and the flags.
    let persisted = crate::cmd::live::Persisted::load(&dir)?;
    let mut listen = args.listen.or(file.listen).unwrap_or_else(default_listen);
    if let Some(l) = persisted.listen.as_deref().and_then(|l| l.parse().ok()) {
        listen = l;
    }
    if let Some(port) = persisted.port {
        listen.set_port(port);
    }
    let intervals = Intervals {
        activation_secs: persisted
            .activation_interval_secs
            .unwrap_or(intervals.activation_secs),
        renewal_secs: persisted
            .renewal_interval_secs
            .unwrap_or(intervals.renewal_secs),
    };
    let priority = persisted
        .priority
        .clone()
        .unwrap_or_else(|| "normal".to_owned());
    if priority != "normal"
        && let Err(error) = crate::cmd::live::set_priority(&priority)
    {
        warn!(%error, "cannot apply the saved process priority");
    }
    let config = ServerConfig {
        max_connections: args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(1024),
        read_timeout: Duration::from_secs(file.read_timeout_secs),
        idle_timeout: Duration::from_secs(file.idle_timeout_secs),
        ..ServerConfig::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if args.dev {
        dev_bootstrap(&dir, &catalog, clock.now())?;
    }
    let service = build_service(&dir, catalog, intervals, durability, clock).await?;
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen} (port in use, or needs privileges?)")
    })?;
    let addr = listener.local_addr()?;
    let cov = service.session().identity().coverage();
    info!(
        %addr,
        data_dir = %dir.display(),
        key_group = %cov.group,
        generation = cov.generation,
        activation_interval_secs = intervals.activation_secs,
        renewal_interval_secs = intervals.renewal_secs,
        "host started"
    );
    // A stable line on stdout for scripts and tests.
    println!("tally host listening on {addr}");
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let dns_status = dir.join(DNS_STATUS_FILE);
    let dns_configured = file.dns.is_some();
    let dns_on = file.dns.as_ref().is_some_and(|d| d.publish) && !args.no_dns_publish;
    let dns_on = persisted
        .dns_publish
        .map_or(dns_on, |p| p && dns_configured);
    let dns_control = match file.dns {
        Some(dns) => {
            let config_dir = args
                .config
                .as_deref()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let publication = dns.publication(&config_dir, addr)?;
            let refresh = Duration::from_secs(dns.refresh_secs.max(10));
            let (tx, rx) = tokio::sync::watch::channel(crate::cmd::live::DnsControl {
                enabled: dns_on,
                port: addr.port(),
            });
            let store = Arc::clone(service.store());
            tokio::spawn(publish_loop(
                publication,
                refresh,
                dns_status,
                store,
                rx,
                shutdown.clone(),
            ));
            Some(tx)
        }
        None => {
            let _ = std::fs::write(
                &dns_status,
                serde_json::json!({ "enabled": false }).to_string(),
            );
            None
        }
    };
    let (rebind_tx, rebind_rx) = tokio::sync::mpsc::channel(1);
    let settings = tally_admin::Settings {
        port: addr.port(),
        listen: addr.to_string(),
        activation_interval_secs: intervals.activation_secs,
        renewal_interval_secs: intervals.renewal_secs,
        dns_publish: dns_on,
        priority,
    };
    let control = Arc::new(crate::cmd::live::LiveHost::new(
        settings,
        Arc::clone(&service),
        rebind_tx,
        dns_control,
        dir.clone(),
    ));
    // Dev hosts (many may run on one machine) take a free port; real hosts 1689 by default.
    let default_admin = SocketAddr::from(([127, 0, 0, 1], if args.dev { 0 } else { 1689 }));
    let admin_listen = args
        .admin_listen
        .or(file.admin_listen)
        .unwrap_or(default_admin);
    let admin_listener = TcpListener::bind(admin_listen).await.with_context(|| {
        format!("cannot listen on {admin_listen} for the admin API (use --admin-listen)")
    })?;
    let admin_addr = admin_listener.local_addr()?;
    let admin = tally_admin::app(tally_admin::AdminState {
        service: Arc::clone(&service),
        control,
        token: Arc::from(crate::cmd::live::admin_token(&dir)?.as_str()),
        metrics: crate::cmd::live::install_metrics(),
        data_dir: dir.clone(),
    });
    let admin_shutdown = shutdown.clone();
    let stopped = async move { admin_shutdown.cancelled().await };
    let tls = match (
        args.admin_tls_cert.or(file.admin_tls_cert),
        args.admin_tls_key.or(file.admin_tls_key),
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => bail!("admin TLS needs both admin_tls_cert and admin_tls_key"),
    };
    let scheme = if let Some((cert, key)) = tls {
        let acceptor = tally_admin::tls::acceptor(&cert, &key).map_err(|e| anyhow::anyhow!(e))?;
        // Local `tally host …` commands trust this certificate.
        std::fs::copy(&cert, dir.join(crate::cmd::live::ADMIN_CERT_FILE))?;
        let listener = tally_admin::tls::TlsListener::new(admin_listener, acceptor);
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, admin)
                .with_graceful_shutdown(stopped)
                .await
            {
                warn!(%error, "admin API stopped");
            }
        });
        "https"
    } else {
        let _ = std::fs::remove_file(dir.join(crate::cmd::live::ADMIN_CERT_FILE));
        tokio::spawn(async move {
            if let Err(error) = axum::serve(admin_listener, admin)
                .with_graceful_shutdown(stopped)
                .await
            {
                warn!(%error, "admin API stopped");
            }
        });
        "http"
    };
    std::fs::write(
        dir.join(crate::cmd::live::ADMIN_ADDR_FILE),
        format!("{scheme}://{admin_addr}"),
    )?;
    info!(%admin_addr, "admin API, metrics and dashboard listening");
    println!("tally admin listening on {admin_addr}");
    tokio::spawn(watch_catalog(
        dir.clone(),
        Arc::clone(&service),
        shutdown.clone(),
    ));
    tokio::spawn(prune_events_loop(
        Arc::clone(service.store()),
        file.event_retention_days.max(1),
        shutdown.clone(),
    ));
    let store = Arc::clone(service.store());
    let started = serde_json::json!({ "addr": addr.to_string() });
    record_event(&store, EVENT_STARTED, "info", "host started", started).await;
    tally_server::run_rebindable(listener, service, config, shutdown, Some(rebind_rx)).await?;
    record_event(
        &store,
        EVENT_STOPPED,
        "info",
        "host stopped",
        serde_json::json!({}),
    )
    .await;
    info!("host stopped");
    Ok(ExitCode::SUCCESS)
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(error) => {
                    warn!(%error, "cannot watch SIGTERM; stop with Ctrl-C");
                    let _ = tokio::signal::ctrl_c().await;
                    token.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "stopping"),
                _ = term.recv() => info!(signal = "SIGTERM", "stopping"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        token.cancel();
    });
}
