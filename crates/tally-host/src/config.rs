//! Host configuration. Raw input first, then one typed value: [`FileConfig`] is the TOML file
//! (every key optional, each with a named default), [`Overrides`] are the command-line flags and
//! environment (parsed by the binary), and [`HostConfig::new`] merges them (flags win) into the
//! one struct the host runs with. Settings changed live (`settings.json`, R26) win over both;
//! the runtime applies them at start.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tally_core::host::Intervals;
use tally_server::ServerConfig;
use tally_store::sqlite::Durability;

use crate::HostError;
use crate::paths;
use crate::store::{Database, Storage};

/// An interval: a bare number is minutes (as R8 states them); `s`, `m`, `h`, `d` suffixes are
/// accepted. Between 1 second and 1 year. The value is in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval(pub u32);

impl std::str::FromStr for Interval {
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
        let scale = match unit.trim() {
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86_400,
            u => return Err(format!("unknown unit '{u}' in '{s}' (use s, m, h or d)")),
        };
        n.checked_mul(scale)
            .filter(|secs| (1..=365 * 86_400).contains(secs))
            .and_then(|secs| u32::try_from(secs).ok())
            .map(Self)
            .ok_or_else(|| format!("interval '{s}' must be between 1 second and 1 year"))
    }
}

impl<'de> Deserialize<'de> for Interval {
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

/// Commit durability, as written in the config file and on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityMode {
    /// Survives power loss (`synchronous = FULL`).
    #[default]
    Full,
    /// Survives a process crash only (benchmarks, tests).
    Normal,
}

impl From<DurabilityMode> for Durability {
    fn from(mode: DurabilityMode) -> Self {
        match mode {
            DurabilityMode::Full => Durability::Full,
            DurabilityMode::Normal => Durability::Normal,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 1688))
}
fn default_activation_interval() -> Interval {
    Interval(Intervals::default().activation_secs)
}
fn default_renewal_interval() -> Interval {
    Interval(Intervals::default().renewal_secs)
}
fn default_max_connections() -> usize {
    1024
}
fn default_read_timeout_secs() -> u64 {
    10
}
fn default_idle_timeout_secs() -> u64 {
    30
}
fn default_event_retention_days() -> u32 {
    90
}
fn default_revocations_refresh_minutes() -> u32 {
    360
}

fn default_registry_retention_days() -> u32 {
    crate::retention::DEFAULT_REGISTRY_RETENTION_DAYS
}
fn default_max_connections_per_source() -> usize {
    tally_server::DEFAULT_MAX_CONNECTIONS_PER_SOURCE
}
fn default_registry_cap() -> u64 {
    tally_store::DEFAULT_REGISTRY_CAP
}
fn default_event_cap() -> u64 {
    tally_store::DEFAULT_EVENT_CAP
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

/// The host config file (TOML). Every key is optional; flags override the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory (keys, certificate, database) [default: `paths::default_data_dir()`].
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Listen address (R15) [default: `default_listen()`, 0.0.0.0:1688].
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Catalog file [default: none: an imported signed catalog, else the demo catalog; see
    /// `catalog::resolve`].
    #[serde(default)]
    pub catalog: Option<PathBuf>,
    /// Retry interval after a failure (R8, R9): minutes, or a string with a unit ("30s")
    /// [default: `default_activation_interval()`, 120 minutes].
    #[serde(default = "default_activation_interval")]
    pub activation_interval: Interval,
    /// Renewal interval (R8, R9): minutes, or a string with a unit ("7d")
    /// [default: `default_renewal_interval()`, 10080 minutes].
    #[serde(default = "default_renewal_interval")]
    pub renewal_interval: Interval,
    /// Connections served at once [default: `default_max_connections()`, 1024].
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections at once from one IP address; over it, that address's own idlest connection
    /// is closed (X4) [default: `default_max_connections_per_source()`, 128].
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Seconds allowed to receive one request [default: `default_read_timeout_secs()`, 10].
    #[serde(default = "default_read_timeout_secs")]
    pub read_timeout_secs: u64,
    /// Seconds a connection may stay idle [default: `default_idle_timeout_secs()`, 30].
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// "full" or "normal" [default: full].
    #[serde(default)]
    pub durability: DurabilityMode,
    /// Address of the admin API, metrics and dashboard [default: none: 127.0.0.1:1689, or a
    /// free loopback port in dev mode].
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) to serve the admin API over TLS [default: none: plain HTTP].
    #[serde(default)]
    pub admin_tls_cert: Option<PathBuf>,
    /// Private key (PEM) for `admin_tls_cert` [default: none].
    #[serde(default)]
    pub admin_tls_key: Option<PathBuf>,
    /// Days the event log keeps events (R27) [default: `default_event_retention_days()`, 90].
    #[serde(default = "default_event_retention_days")]
    pub event_retention_days: u32,
    /// Online hosts: the authority's URL to fetch its revocation list from (X7), e.g.
    /// `https://activation.vendor.example` [default: none: lists arrive only by
    /// `tally host import-revocations FILE`].
    #[serde(default)]
    pub revocations_url: Option<String>,
    /// Minutes between fetches from `revocations_url` [default: 360; at least 1].
    #[serde(default = "default_revocations_refresh_minutes")]
    pub revocations_refresh_minutes: u32,
    /// DNS publishing (R17, R18) [default: none: not published; records can be made by hand].
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    /// Where counts, registry and events live: unset for the embedded SQLite file in the data
    /// directory, or `postgres://USER[:PASSWORD]@HOST[:PORT][,HOST[:PORT]…]/DB` for a fleet
    /// (hosts sharing one database count as one, X1) [default: none: embedded].
    #[serde(default)]
    pub database: Option<String>,
    /// This host's name in a fleet's registry and events [default: none: the machine name and
    /// the first 8 hex digits of the certificate fingerprint].
    #[serde(default)]
    pub host_name: Option<String>,
    /// Days a machine stays in the registry after its last request (R6)
    /// [default: `default_registry_retention_days()`, 210: validity plus the table window].
    #[serde(default = "default_registry_retention_days")]
    pub registry_retention_days: u32,
    /// Most machines in the registry; at the cap new machines are counted but not registered,
    /// with event 1005 [default: `default_registry_cap()`, 10 000 000].
    #[serde(default = "default_registry_cap")]
    pub registry_cap: u64,
    /// Most rows in the event log, besides `event_retention_days`: over it the oldest events
    /// are deleted, with event 1011 once (issue 21) [default: `default_event_cap()`, 5 000 000,
    /// about 2 GB].
    #[serde(default = "default_event_cap")]
    pub event_cap: u64,
    /// Answer `tally bench`'s synthetic edition (`tally_core::bench`), counted in a pool of its
    /// own that no listing, count or compliance report shows [default: false; true with
    /// `--dev`].
    #[serde(default)]
    pub accept_bench: Option<bool>,
    /// A fleet host refuses to start unless the database replicates commits synchronously to a
    /// standby in sync (`synchronous_standby_names`, `synchronous_commit`, `pg_stat_replication`):
    /// with it, no acknowledged activation can be lost in a failover (issue 21). Ignored on the
    /// embedded database [default: false: the host starts, and warns (event 1010) when
    /// acknowledged commits would not survive a failover].
    #[serde(default)]
    pub require_sync_replication: bool,
    /// X6, what a host does when two installations present one CMID (a disk image deployed
    /// without `generalize`, a cloned VM): `"apart"` tells the copy to take a new CMID, so
    /// each copy is counted (the count is a compliance signal); `"once"` counts them as one
    /// machine and only reports them (event 1009, `clones` in `host clients`) [default:
    /// `"apart"`].
    #[serde(default)]
    pub clones: tally_core::clones::ClonePolicy,
}

/// The `[dns]` section of the host config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Publish the SRV record (R17); `--no-dns-publish` turns it off [default: true].
    #[serde(default = "default_true")]
    pub publish: bool,
    /// The DNS server that accepts updates for the zones, ADDR:PORT (required).
    pub server: SocketAddr,
    /// TSIG key file in BIND `tsig-keygen` format (hmac-sha256), relative to the config file's
    /// directory (required).
    pub key_file: PathBuf,
    /// This host's FQDN: the SRV target (required).
    pub fqdn: String,
    /// Zone of the FQDN's A/AAAA records [default: none: the FQDN's parent domain].
    #[serde(default)]
    pub address_zone: Option<String>,
    /// Addresses published for the FQDN [default: none: the listen address unless 0.0.0.0/::].
    #[serde(default)]
    pub addresses: Option<Vec<IpAddr>>,
    /// SRV label [default: `default_label()`, `_tally._tcp`].
    #[serde(default = "default_label")]
    pub label: String,
    /// TTL of the records, seconds [default: `default_ttl()`, 300].
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// Seconds between republishing [default: `default_refresh_secs()`, 900; at least 10].
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// Domains to publish into, each with optional priority and weight; replaces the default
    /// (the FQDN's own domain) [default: empty].
    #[serde(default)]
    pub domains: Vec<tally_dns::publish::Target>,
}

impl FileConfig {
    /// Reads the config file at `path`; with no path, every key takes its default.
    pub fn read(path: Option<&Path>) -> Result<Self, HostError> {
        let (text, path) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(HostError::read(p))?,
                p.to_owned(),
            ),
            None => (String::new(), PathBuf::new()),
        };
        toml::from_str(&text).map_err(|source| HostError::ConfigSyntax { path, source })
    }
}

/// What the command line (and the environment, through it) sets; each `None` leaves the
/// config file's value.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--data-dir` / `TALLY_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--catalog` / `TALLY_CATALOG`.
    pub catalog: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--activation-interval`.
    pub activation_interval: Option<Interval>,
    /// `--renewal-interval`.
    pub renewal_interval: Option<Interval>,
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--durability`.
    pub durability: Option<DurabilityMode>,
    /// `--admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `--admin-tls-cert`.
    pub admin_tls_cert: Option<PathBuf>,
    /// `--admin-tls-key`.
    pub admin_tls_key: Option<PathBuf>,
    /// `--no-dns-publish`.
    pub no_dns_publish: bool,
    /// `--dev`: create a local authority and certify this host on first start.
    pub dev: bool,
    /// `--database` / `TALLY_DATABASE_URL`.
    pub database: Option<String>,
    /// `--host-name`.
    pub host_name: Option<String>,
    /// `--accept-bench`.
    pub accept_bench: bool,
    /// `--require-sync-replication`.
    pub require_sync_replication: bool,
}

/// The admin API's TLS certificate and key (PEM files).
#[derive(Clone, Debug)]
pub struct AdminTls {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// Everything a host runs with, merged and validated.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The directory relative paths in the config file are taken from (the file's directory).
    pub config_dir: PathBuf,
    /// Dev mode (see [`crate::identity::dev_bootstrap`]).
    pub dev: bool,
    /// The activation listener's address (R15).
    pub listen: SocketAddr,
    /// The configured catalog file, if any (see [`crate::catalog::resolve`]).
    pub catalog: Option<PathBuf>,
    /// The intervals sent to clients (R8, R9).
    pub intervals: Intervals,
    /// Connection cap and timeouts of the activation listener.
    pub server: ServerConfig,
    /// Commit durability.
    pub durability: Durability,
    /// The admin API's address.
    pub admin_listen: SocketAddr,
    /// TLS for the admin API, if configured.
    pub admin_tls: Option<AdminTls>,
    /// Days of events kept (R27), at least 1.
    pub event_retention_days: u32,
    /// Where to fetch the authority's revocation list from, if anywhere (X7).
    pub revocations_url: Option<String>,
    /// How often to fetch it.
    pub revocations_refresh: Duration,
    /// The `[dns]` section, if any.
    pub dns: Option<DnsConfig>,
    /// Whether DNS publishing starts on (R17): configured, `publish = true`, no
    /// `--no-dns-publish`.
    pub dns_publish: bool,
    /// Where counts, registry and events live.
    pub database: Database,
    /// Whether [`HostConfig::database`] is the one the data directory remembers
    /// (`DATA_DIR/database.url`, see [`crate::remember`]) rather than a flag or the config file.
    pub database_remembered: bool,
    /// This host's name in a fleet (see [`FileConfig::host_name`]).
    pub host_name: Option<String>,
    /// Days a machine stays in the registry after its last request, at least 1.
    pub registry_retention_days: u32,
    /// Most machines in the registry.
    pub registry_cap: u64,
    /// Most rows in the event log, at least 1 (see [`FileConfig::event_cap`]).
    pub event_cap: u64,
    /// Whether the host answers the bench edition (see [`FileConfig::accept_bench`]).
    pub accept_bench: bool,
    /// See [`FileConfig::require_sync_replication`].
    pub require_sync_replication: bool,
    /// What to do with detected clones (see [`FileConfig::clones`]).
    pub clones: tally_core::clones::ClonePolicy,
}

impl HostConfig {
    /// Reads the config file at `path` (if any) and merges `overrides` into it.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Self, HostError> {
        let file = FileConfig::read(path)?;
        let config_dir = path
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let explicit = overrides.database.clone().or_else(|| file.database.clone());
        let mut config = Self::new(file, config_dir, overrides)?;
        // Flag › config file › what the data directory remembers › embedded (issue 21).
        let (database, remembered) =
            crate::remember::resolve(&config.data_dir, explicit.as_deref())?;
        config.database = database;
        config.database_remembered = remembered;
        Ok(config)
    }

    /// Merges `overrides` (flags win) into `file`, whose relative paths are under `config_dir`.
    pub fn new(
        file: FileConfig,
        config_dir: PathBuf,
        overrides: Overrides,
    ) -> Result<Self, HostError> {
        let admin_tls = match (
            overrides.admin_tls_cert.or(file.admin_tls_cert),
            overrides.admin_tls_key.or(file.admin_tls_key),
        ) {
            (Some(cert), Some(key)) => Some(AdminTls { cert, key }),
            (None, None) => None,
            _ => {
                return Err(HostError::Invalid(
                    "admin TLS needs both admin_tls_cert and admin_tls_key".into(),
                ));
            }
        };
        // Dev hosts (many may run on one machine) take a free port; real hosts 1689.
        let default_admin =
            SocketAddr::from(([127, 0, 0, 1], if overrides.dev { 0 } else { 1689 }));
        let dns_publish = file.dns.as_ref().is_some_and(|d| d.publish) && !overrides.no_dns_publish;
        Ok(Self {
            data_dir: overrides
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(paths::default_data_dir),
            config_dir,
            dev: overrides.dev,
            listen: overrides.listen.unwrap_or(file.listen),
            catalog: overrides.catalog.or(file.catalog),
            intervals: Intervals {
                activation_secs: overrides
                    .activation_interval
                    .unwrap_or(file.activation_interval)
                    .0,
                renewal_secs: overrides
                    .renewal_interval
                    .unwrap_or(file.renewal_interval)
                    .0,
            },
            server: ServerConfig {
                max_connections: overrides.max_connections.unwrap_or(file.max_connections),
                max_connections_per_source: file.max_connections_per_source.max(1),
                read_timeout: Duration::from_secs(file.read_timeout_secs),
                idle_timeout: Duration::from_secs(file.idle_timeout_secs),
                ..ServerConfig::default()
            },
            durability: overrides.durability.unwrap_or(file.durability).into(),
            admin_listen: overrides
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or(default_admin),
            admin_tls,
            event_retention_days: file.event_retention_days.max(1),
            revocations_url: file.revocations_url,
            revocations_refresh: Duration::from_secs(
                u64::from(file.revocations_refresh_minutes.max(1)) * 60,
            ),
            dns: file.dns,
            dns_publish,
            database: Database::parse(overrides.database.as_deref().or(file.database.as_deref()))?,
            database_remembered: false,
            host_name: overrides.host_name.or(file.host_name),
            registry_retention_days: file.registry_retention_days.max(1),
            registry_cap: file.registry_cap.max(1),
            event_cap: file.event_cap.max(1),
            accept_bench: overrides.accept_bench || file.accept_bench.unwrap_or(overrides.dev),
            require_sync_replication: overrides.require_sync_replication
                || file.require_sync_replication,
            clones: file.clones,
        })
    }

    /// How the host opens its store.
    pub fn storage(&self) -> Storage {
        Storage {
            database: self.database.clone(),
            durability: self.durability,
            host_name: self.host_name.clone(),
            options: tally_store::StoreOptions {
                registry_cap: self.registry_cap,
                event_cap: self.event_cap,
                require_sync_replication: self.require_sync_replication,
                // X5: a fleet counts on the database's clock.
                ..tally_store::StoreOptions::default()
            },
            clones: self.clones,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_take_minutes_or_units_within_a_year() {
        assert_eq!("120".parse::<Interval>(), Ok(Interval(7200)));
        assert_eq!("30s".parse::<Interval>(), Ok(Interval(30)));
        assert_eq!("7d".parse::<Interval>(), Ok(Interval(7 * 86_400)));
        assert!("0".parse::<Interval>().is_err());
        assert!("400d".parse::<Interval>().is_err());
        assert!("5w".parse::<Interval>().is_err());
        // Overflow is an error, not a wrap.
        assert!("99999999999999999d".parse::<Interval>().is_err());
    }

    #[test]
    fn unknown_keys_are_refused_and_flags_win() {
        let err = toml::from_str::<FileConfig>("listn = \"0.0.0.0:1\"").expect_err("unknown");
        assert!(err.to_string().contains("listn"), "{err}");
        let file: FileConfig =
            toml::from_str("listen = \"127.0.0.1:5000\"\nactivation_interval = \"30s\"")
                .expect("valid");
        let overrides = Overrides {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 6000))),
            ..Overrides::default()
        };
        let config = HostConfig::new(file, PathBuf::new(), overrides).expect("merged");
        assert_eq!(config.listen.port(), 6000);
        assert_eq!(config.intervals.activation_secs, 30);
        assert_eq!(
            config.intervals.renewal_secs,
            Intervals::default().renewal_secs
        );
        assert_eq!(config.admin_listen.port(), 1689);
    }

    #[test]
    fn admin_tls_needs_both_files() {
        let file: FileConfig = toml::from_str("admin_tls_cert = \"c.pem\"").expect("valid");
        assert!(HostConfig::new(file, PathBuf::new(), Overrides::default()).is_err());
    }
}
