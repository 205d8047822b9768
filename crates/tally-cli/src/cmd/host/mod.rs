//! `tally host`: run a host, set it up, look at its state. Each command turns its arguments
//! into a `tally_host` call and prints the result.
//!
//! - [`run`]: `host run`.
//! - [`setup`]: `init`, `install-cert`, `install-key`, `activate`, `catalog import`.
//! - [`read`]: `status`, `report`, `events`, `clients`, `backup`, `config check` (offline, or
//!   `--target` through the admin API).
//! - [`set`]: `host set` through the admin API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use tally_host::HostConfig;
use tally_host::config::{Interval, Overrides};

use crate::cmd::catalog::CatalogArg;

mod migrate;
mod read;
mod run;
mod set;
mod setup;

pub use read::{print_remote_status, print_settings};

/// `tally host ...`
#[derive(Subcommand)]
pub enum HostCommand {
    /// Serve activation requests (TCP, default port 1688).
    ///
    /// With --dev, the first start creates a local authority in the data directory, a top-group
    /// host key and a certificate, and writes DATA_DIR/authority.pub for clients to trust.
    Run(run::RunArgs),
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
        /// DATA_DIR/authority.pub) [default: DATA_DIR/authority.pub]. A rollover file beside it
        /// (`authority.rollover`) is imported too (X8).
        #[arg(long, value_name = "FILE")]
        trust: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch the proof that this host's certificate is in the authority's transparency log
    /// (X8), check it under DATA_DIR/authority.pub and keep it as DATA_DIR/certificate.proof.
    /// Online activation keeps one already; after an offline activation, run this once the
    /// host can reach the authority (or on any machine that can, and copy the file).
    LogProof {
        #[command(flatten)]
        dir: DirArgs,
        /// The authority's URL, e.g. https://activation.vendor.example.
        #[arg(long, value_name = "URL")]
        authority: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Accept a root rollover (X8): the vendor's `authority.rollover` file, whose statements
    /// hand trust from the root in DATA_DIR/authority.pub to a new root. Each statement must be
    /// signed by the root this host trusts (or one it already accepted); what verifies is kept
    /// in DATA_DIR/authority.rollover, and the host then accepts certificates and catalogs
    /// signed by the new root.
    ImportRollover {
        #[command(flatten)]
        dir: DirArgs,
        /// The rollover file from the vendor (`tally authority rollover --out`).
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Catalogs: `tally host catalog import FILE` loads a newer catalog signed by the authority
    /// into this host (a running host picks it up within seconds, R24).
    #[command(subcommand)]
    Catalog(HostCatalogCommand),
    /// Import the vendor's signed revocation list (X7; `tally authority revocations --out
    /// FILE`), for hosts without a `revocations_url`: this host then relays it to its clients,
    /// which refuse every revoked host. A list older than the one held is refused (no
    /// rollback). If it revokes this host, the host answers no activation from then on. A
    /// running host loads it within a second.
    ImportRevocations {
        #[command(flatten)]
        dir: DirArgs,
        /// The list file (`tally-revocation-list-v1 ...`).
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
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
    /// Move this single host's data (pools' tables, registry, events) into a fleet's
    /// PostgreSQL database, so the fleet counts on where the host stopped. Stop the host first
    /// (the move holds the data directory's lock). A database that already counts one of its
    /// pools, or holds one of its machines, is refused and nothing is moved. Afterwards the data
    /// directory remembers the fleet database: start the host again with no --database.
    Migrate {
        #[command(flatten)]
        dir: DirArgs,
        /// The fleet's database: postgres://USER[:PASSWORD]@HOST[:PORT]/DB (the password is kept
        /// in DATA_DIR/database.password, mode 0600, never printed).
        #[arg(long, value_name = "URL")]
        to: String,
        /// This host's name in the moved registry rows and events [default: as `tally host run`
        /// names it: machine name and certificate fingerprint].
        #[arg(long)]
        host_name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the host's database in full (SQLite `integrity_check`; read-only, safe while the
    /// host runs). Exit 0 when sound; 1 with what is damaged and how to restore a backup.
    Check {
        #[command(flatten)]
        dir: DirArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
    Set(set::SetArgs),
    /// Query the event log (R27): 12290 activation requests, 12293/12294 DNS publishing,
    /// 1000 start, 1001 stop, 1002 setting changed, 1004 catalog loaded, 1007 host clock suspect,
    /// 1008 retention held back (X5), 1011 event log at its cap (the oldest events deleted).
    Events {
        #[command(flatten)]
        dir: DirArgs,
        #[command(flatten)]
        remote: crate::cmd::remote::RemoteArgs,
        /// Only the last period, e.g. `2h`, `30m`, `7d` (a bare number is minutes).
        #[arg(long, value_name = "PERIOD")]
        since: Option<Interval>,
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
        /// Only machines whose name starts with this text, in any case.
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
    /// newer than the one in force (the imported one, else the configured one, else the demo).
    Import {
        #[command(flatten)]
        dir: DirArgs,
        /// The signed catalog file.
        file: PathBuf,
    },
}

/// Where a host's data is: the data directory, and the config file and catalog that apply to
/// it. Every host command reads them the same way (`HostConfig::load`), so an offline command
/// sees the catalog `host run` serves.
#[derive(Args, Clone, Debug)]
pub struct DirArgs {
    /// Host data directory [default: the config file's data_dir, else
    /// ~/.local/share/tally/host].
    #[arg(long, env = "TALLY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Config file (TOML); see docs/OPERATIONS.md for the keys.
    #[arg(long, env = "TALLY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub catalog: CatalogArg,
    /// Where counts, registry and events live: a fleet's PostgreSQL,
    /// postgres://USER[:PASSWORD]@HOST[:PORT][,HOST2[:PORT]]/DB?target_session_attrs=read-write
    /// (hosts on one database count as one). `tally host run` records it in DATA_DIR
    /// (database.url; the password in database.password, mode 0600), so later commands on
    /// DATA_DIR need no flag; `sqlite` names the embedded file [default: the config file's
    /// `database`, else the database DATA_DIR remembers, else the embedded SQLite file
    /// DATA_DIR/tally.db].
    #[arg(
        long,
        env = "TALLY_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database: Option<String>,
}

impl DirArgs {
    /// The flags this struct carries, as config overrides.
    fn overrides(&self) -> Overrides {
        Overrides {
            data_dir: self.data_dir.clone(),
            catalog: self.catalog.catalog.clone(),
            database: self.database.clone(),
            ..Overrides::default()
        }
    }

    /// The merged configuration (config file, then these flags).
    fn config(&self) -> anyhow::Result<HostConfig> {
        Ok(HostConfig::load(self.config.as_deref(), self.overrides())?)
    }

    /// The data directory.
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        Ok(self.config()?.data_dir)
    }
}

/// Runs a host command.
pub async fn run(cmd: HostCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        HostCommand::Run(args) => run::serve(args).await,
        HostCommand::Init(dir) => setup::init(&dir),
        HostCommand::InstallCert { dir, file, trust } => {
            setup::install_cert(&dir, &file, trust.as_deref())
        }
        HostCommand::InstallKey { dir, key } => setup::install_key(&dir, &key).await,
        HostCommand::Activate {
            dir,
            online,
            offline,
            confirmation,
            trust,
            json,
        } => setup::activate(&dir, online, offline, confirmation, trust, json).await,
        HostCommand::LogProof {
            dir,
            authority,
            json,
        } => setup::log_proof(&dir, &authority, json).await,
        HostCommand::Catalog(HostCatalogCommand::Import { dir, file }) => {
            setup::import_catalog(&dir, &file)
        }
        HostCommand::ImportRevocations { dir, file, json } => {
            setup::import_revocations(&dir, &file, json)
        }
        HostCommand::ImportRollover { dir, file, json } => {
            setup::import_rollover(&dir, &file, json)
        }
        HostCommand::Status { dir, remote, json } => read::status(&dir, &remote, json).await,
        HostCommand::Report {
            dir,
            remote,
            from,
            to,
            format,
            out,
        } => read::report(&dir, &remote, from, to, &format, out).await,
        HostCommand::Backup { dir, out } => read::backup(&dir, &out).await,
        HostCommand::Config { file, .. } => read::config_check(&file),
        HostCommand::Check { dir, json } => read::check(&dir, json).await,
        HostCommand::Migrate {
            dir,
            to,
            host_name,
            json,
        } => migrate::migrate(&dir, &to, host_name.as_deref(), json).await,
        HostCommand::Set(args) => set::set(args).await,
        HostCommand::Events {
            dir,
            remote,
            since,
            id,
            limit,
            json,
        } => read::events(&dir, &remote, since, id, limit, json).await,
        HostCommand::Clients {
            dir,
            remote,
            search,
            limit,
            offset,
            json,
        } => read::clients(&dir, &remote, search, limit, offset, json).await,
    }
}
