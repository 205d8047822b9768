//! `tally client`: install a key, activate against a host, show status.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use tally_client::state::{BELOW_THRESHOLD_CODE, ClientState};
use tally_client::{ActivationParams, Connector};
use tally_core::keys::{KeyKind, ProductKey};
use tally_core::time::{Clock, SystemClock};
use tally_core::trust::{TrustAnchor, parse_authority_public};
use tally_proto::MachineName;

use crate::cmd::catalog::CatalogArg;
use crate::output;
use crate::paths;

/// Exit code of `activate` when the host answered but the count is below the threshold.
pub const EXIT_BELOW_THRESHOLD: u8 = 2;
/// Exit code of `activate` when no verified answer was had.
pub const EXIT_FAILED: u8 = 1;

/// `tally client` options.
#[derive(Args)]
pub struct ClientArgs {
    /// Client state directory [default: ~/.local/share/tally/client].
    #[arg(long, env = "TALLY_STATE_DIR", value_name = "DIR", global = true)]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    catalog: CatalogArg,
    /// Authority public key to trust (a --dev host writes DATA_DIR/authority.pub)
    /// [default: STATE_DIR/authority.pub].
    #[arg(long, env = "TALLY_TRUST", value_name = "FILE", global = true)]
    trust: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ClientCommand,
}

/// `tally client ...`
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Install an edition's setup key (see `tally catalog list`): this installation becomes a
    /// host-activated client in its 30-day grace period.
    InstallKey {
        /// The key, e.g. FCK62-BC4QC-96T2H-XD989-PVGG9.
        key: String,
    },
    /// Activate (or renew) now against a host; exits 0 when activated, 2 when the count is
    /// below the threshold (R2), 1 on error.
    Activate {
        /// Host to use, HOST[:PORT] (port 1688 when omitted).
        #[arg(long, value_name = "HOST:PORT")]
        host: Option<String>,
        /// Machine name to report [default: this machine's host name].
        #[arg(long)]
        machine_name: Option<String>,
        /// Seconds to wait for the host.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Show this installation's license state.
    Status,
}

/// Appends the default port if `host` has none.
pub fn with_default_port(host: &str) -> String {
    let has_port = if let Some(rest) = host.strip_prefix('[') {
        rest.contains("]:")
    } else {
        host.matches(':').count() == 1
    };
    if has_port {
        host.to_owned()
    } else if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:1688")
    } else {
        format!("{host}:1688")
    }
}

fn load_trust(path: Option<&Path>, state_dir: &Path) -> anyhow::Result<TrustAnchor> {
    let path = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| state_dir.join(paths::AUTHORITY_PUB));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no trusted authority key at {}: pass --trust FILE (a `tally host run --dev` host writes \
             DATA_DIR/authority.pub)",
            path.display()
        )
    })?;
    parse_authority_public(&text).with_context(|| format!("{}", path.display()))
}

/// Runs a client command.
pub async fn run(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let dir = args
        .state_dir
        .clone()
        .unwrap_or_else(paths::default_client_dir);
    let catalog = args.catalog.load()?;
    let clock = SystemClock;
    let now = clock.now();
    let mut state = ClientState::load_or_new(&dir, now)?;
    match args.command {
        ClientCommand::InstallKey { key } => {
            let key: ProductKey = key.trim().parse().context("that is not a valid key")?;
            if key.kind() == KeyKind::Host {
                bail!(
                    "this is a host key: it belongs on a Tally host (`tally host`), not on a client. \
                     Clients install their edition's setup key (see `tally catalog list`)"
                );
            }
            let edition = state.install_setup_key(key, &catalog, now)?.clone();
            state.save(&dir)?;
            if args.json {
                output::json(&json!({
                    "cmid": state.cmid,
                    "edition": edition.name,
                    "sku": edition.sku,
                    "status": state.status,
                    "grace_end": state.grace_end,
                }))?;
            } else {
                println!("Installed setup key for {}.", edition.name);
                println!(
                    "Status: {}; activate with: tally client activate --host HOST",
                    state.status
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Activate {
            host,
            machine_name,
            timeout,
        } => {
            let Some(edition) = state.edition(&catalog).cloned() else {
                bail!(
                    "no key installed: run `tally client install-key SETUP_KEY` first (see `tally catalog list`)"
                );
            };
            let Some(host) = host else {
                bail!("no host given: pass --host HOST:PORT");
            };
            let host = with_default_port(&host);
            let anchor = load_trust(args.trust.as_deref(), &dir)?;
            let connector = Connector::new(anchor, Duration::from_secs(timeout.max(1)));
            for cert in state.certificates() {
                // A remembered certificate that no longer verifies is simply fetched again.
                let _ = connector.remember(cert, now);
            }
            let params = ActivationParams {
                cmid: state.cmid,
                edition: edition.clone(),
                machine_name: MachineName::lossy(&machine_name.unwrap_or_else(paths::machine_name)),
                license_state: state.status.wire(),
                grace_remaining_minutes: state.minutes_left(now),
            };
            let outcome = connector.activate(&host, &params, now).await;
            state.set_certificates(&connector.certificates());
            let (code, exit, result, count) = match &outcome {
                Ok(answer) => {
                    state.apply_answer(answer, now);
                    let result = state
                        .last_attempt
                        .as_ref()
                        .map_or("unknown".into(), |a| a.result.clone());
                    let exit = if answer.activated {
                        0
                    } else if answer.result.is_success() {
                        EXIT_BELOW_THRESHOLD
                    } else {
                        EXIT_FAILED
                    };
                    let code = if answer.result.is_success() && !answer.activated {
                        BELOW_THRESHOLD_CODE
                    } else {
                        answer.result.0
                    };
                    (code, exit, result, Some(answer.count))
                }
                Err(err) => {
                    state.record_failure(Some(host.clone()), err.code_name(), err.code().0, now);
                    (err.code().0, EXIT_FAILED, err.code_name().to_owned(), None)
                }
            };
            state.save(&dir)?;
            if args.json {
                output::json(&json!({
                    "result": result,
                    "code": format!("0x{code:08X}"),
                    "count": count,
                    "threshold": edition.threshold,
                    "edition": edition.name,
                    "host": host,
                    "status": state.status,
                    "validity_end": state.validity_end,
                    "error": outcome.as_ref().err().map(|e| e.to_string()),
                }))?;
            } else {
                match &outcome {
                    Ok(a) if a.activated => println!(
                        "Activated {} (count {} of {} needed). Valid until {}.",
                        edition.name,
                        a.count,
                        edition.threshold,
                        state
                            .validity_end
                            .map_or_else(|| "?".into(), |t| t.to_string())
                    ),
                    Ok(a) if a.result.is_success() => println!(
                        "Not activated yet: the host counts {} machine(s), {} needs {} (0x{code:08X}). \
                         Still in grace; retry later.",
                        a.count, edition.name, edition.threshold
                    ),
                    Ok(a) => println!("The host refused: {} (0x{code:08X}).", a.result),
                    Err(e) => eprintln!("Activation failed (0x{code:08X}): {e}"),
                }
            }
            Ok(ExitCode::from(exit))
        }
        ClientCommand::Status => {
            let edition = state.edition(&catalog);
            if args.json {
                output::json(&json!({
                    "cmid": state.cmid,
                    "edition": edition.map(|e| e.name.clone()),
                    "sku": state.sku,
                    "partial_key": state.key.map(ProductKey::partial),
                    "status": state.status,
                    "grace_end": state.grace_end,
                    "validity_end": state.validity_end,
                    "minutes_left": state.minutes_left(now),
                    "activation_interval": state.intervals().activation,
                    "renewal_interval": state.intervals().renewal,
                    "last_attempt": state.last_attempt,
                }))?;
            } else {
                println!("CMID:        {}", state.cmid);
                println!(
                    "Edition:     {}",
                    edition.map_or("(no key installed)", |e| e.name.as_str())
                );
                if let Some(k) = state.key {
                    println!("Partial key: {}", k.partial());
                }
                println!("Status:      {}", state.status);
                if let Some(t) = state.validity_end {
                    println!("Valid until: {t}");
                } else if let Some(t) = state.grace_end {
                    println!("Grace until: {t}");
                }
                if let Some(a) = &state.last_attempt {
                    println!(
                        "Last try:    {} at {} -> {} (0x{:08X})",
                        a.host.as_deref().unwrap_or("-"),
                        a.at,
                        a.result,
                        a.code
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_port_is_added_only_when_missing() {
        assert_eq!(
            with_default_port("kms.example.test"),
            "kms.example.test:1688"
        );
        assert_eq!(with_default_port("10.0.0.1:99"), "10.0.0.1:99");
        assert_eq!(with_default_port("::1"), "[::1]:1688");
        assert_eq!(with_default_port("[::1]:7"), "[::1]:7");
        assert_eq!(with_default_port("[::1]"), "[::1]:1688");
    }
}
