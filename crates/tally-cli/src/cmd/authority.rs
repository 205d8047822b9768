//! `tally authority`: the vendor's side, CLI only.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use tally_authority::dir;
use tally_core::keys::{KeyGroup, ProductKey};
use tally_core::time::{Clock, SystemClock};
use tally_core::trust::{armor, labels, parse_host_public, to_hex};

use crate::output;

/// `tally authority ...`
#[derive(Subcommand)]
pub enum AuthorityCommand {
    /// Create the vendor's root key in DIR (authority.key, mode 0600) and authority.pub.
    Init {
        /// Directory to hold the authority's keys.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a host key for a key group and product generation (R21).
    IssueHostKey {
        /// The authority directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Key group: client-vl, server-a, server-b or server-c. A key activates its group and
        /// every group below it.
        #[arg(long)]
        group: KeyGroup,
        /// Newest product generation the key activates (0-15); older generations are included.
        #[arg(long, default_value_t = 1)]
        generation: u8,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Certify a host's public key for the group of a host key it holds (R16).
    Certify {
        /// The authority directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The host key installed on the host.
        #[arg(long, value_name = "KEY")]
        host_key: ProductKey,
        /// The host's public key file (`host.pub` from `tally host init`).
        #[arg(long, value_name = "FILE")]
        host_pub: PathBuf,
        /// Where to write the certificate (give it to `tally host install-cert`).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// Runs an authority command.
pub fn run(cmd: AuthorityCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuthorityCommand::Init { dir: d, json } => {
            let (authority, public) = dir::init(&d)?;
            if json {
                output::json(&json!({
                    "public_key_file": public,
                    "public_key": to_hex(authority.public().as_bytes()),
                }))?;
            } else {
                println!("Authority created in {}.", d.display());
                println!(
                    "Give clients {} to trust; keep authority.key secret.",
                    public.display()
                );
            }
        }
        AuthorityCommand::IssueHostKey {
            dir: d,
            group,
            generation,
            json,
        } => {
            let authority = dir::load(&d)?;
            let key = authority.issue_host_key(group, generation)?;
            if json {
                output::json(&json!({
                    "key": key.to_string(),
                    "group": group.name(),
                    "generation": generation,
                    "serial": key.serial(),
                }))?;
            } else {
                println!("{key}");
            }
        }
        AuthorityCommand::Certify {
            dir: d,
            host_key,
            host_pub,
            out,
        } => {
            let authority = dir::load(&d)?;
            let text = std::fs::read_to_string(&host_pub)
                .with_context(|| format!("cannot read host public key {}", host_pub.display()))?;
            let public =
                parse_host_public(&text).with_context(|| format!("{}", host_pub.display()))?;
            let cert = authority.certify(host_key, &public, SystemClock.now())?;
            std::fs::write(&out, armor(labels::HOST_CERTIFICATE, &cert.to_bytes()))
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("Certificate written to {}.", out.display());
            println!("On the host: tally host install-cert {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
