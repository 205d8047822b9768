//! Talking to a host's admin API (R26): `--target URL` with `--token`/`--token-file`, like the
//! slmgr "TargetComputerName user password" form; without a target, the host running on this
//! machine's data directory. The client is `tally_admin::remote`; this holds the flags.

use std::path::{Path, PathBuf};

use clap::Args;
use tally_admin::remote::{AdminClient, Endpoint};

/// Where a host's admin API is.
#[derive(Args, Clone, Debug, Default)]
pub struct RemoteArgs {
    /// A host's admin API, e.g. http://tally1.corp.example:1689 (a remote host).
    #[arg(long, value_name = "URL", global = true)]
    pub target: Option<String>,
    /// The admin token (prefer --token-file: command lines are visible to other users).
    #[arg(
        long,
        env = "TALLY_ADMIN_TOKEN",
        value_name = "TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// A file holding the admin token (the host's DATA_DIR/admin.token).
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// For an https target: the certificate (PEM) to trust, e.g. the host's self-signed one.
    #[arg(long, value_name = "FILE", global = true)]
    pub ca_file: Option<PathBuf>,
}

/// A resolved admin endpoint.
pub struct Admin;

impl Admin {
    /// The target given, or the host running on `data_dir`.
    pub fn resolve(args: &RemoteArgs, data_dir: &Path) -> anyhow::Result<AdminClient> {
        let endpoint = Endpoint {
            target: args.target.clone(),
            token: args.token.clone(),
            token_file: args.token_file.clone(),
            ca_file: args.ca_file.clone(),
        };
        Ok(AdminClient::resolve(&endpoint, data_dir)?)
    }
}
