//! `tally slmgr`: the option names admins know from volume-activation tools, mapped onto
//! `tally client` (client side: /ipk /ato /dli /dlv /xpr /skms /ckms /rearm /upk).

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use tally_client::agent::AgentRequest;

use crate::cmd::client::{ClientOpts, execute, report};

/// `tally slmgr` options.
#[derive(Args)]
#[command(
    after_help = "Options:\n  /ipk KEY          install a setup key\n  /upk              remove the key\n  \
/ato              activate now\n  /dli, /dlv        display license information (/dlv: verbose)\n  \
/xpr              show the expiry\n  /skms HOST[:PORT] use this host (discovery off, R20)\n  \
/ckms             clear the host (discovery on)\n  /rearm            reset the grace period (R11)\n\n\
On a host (with --data-dir DIR, or --target URL --token-file FILE):\n  \
/dli              the host's counts and settings\n  /sprt PORT        set the activation port\n  \
/sai MINUTES      set the activation (retry) interval\n  /sri MINUTES      set the renewal interval\n  \
/sdns             publish DNS records\n  /cdns             stop publishing DNS records\n  \
/cpri             low process priority\n  /spri             normal process priority"
)]
pub struct SlmgrArgs {
    #[command(flatten)]
    opts: ClientOpts,
    /// Act on the host whose data directory this is (host options).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    remote: crate::cmd::remote::RemoteArgs,
    /// /rearm even though this installation is activated.
    #[arg(long)]
    force: bool,
    /// The slmgr-style option and its value, e.g. `/ipk KEY` (`-ipk KEY` works too). Flags such
    /// as --json may come before or after it.
    #[arg(num_args = 1..=2, value_name = "OPTION")]
    args: Vec<String>,
}

/// The slmgr option names, for [`normalize_args`].
const OPTIONS: &[&str] = &[
    "ipk", "upk", "ato", "dli", "dlv", "xpr", "skms", "ckms", "rearm", "sprt", "sai", "sri",
    "sdns", "cdns", "cpri", "spri",
];

/// Rewrites `tally slmgr -dli` as `tally slmgr /dli`, so that the option may take the dash form
/// while every other word starting with `-` stays a flag (`--json` anywhere on the line).
pub fn normalize_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let Some(pos) = args.iter().position(|a| a == "slmgr") else {
        return args;
    };
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let rewritten = a
                .to_str()
                .and_then(|w| w.strip_prefix('-'))
                .filter(|name| i > pos && OPTIONS.contains(&name.to_ascii_lowercase().as_str()))
                .map(|name| format!("/{name}"));
            match rewritten {
                Some(option) => option.into(),
                None => a,
            }
        })
        .collect()
}

/// Runs an slmgr alias.
pub async fn run(args: SlmgrArgs) -> anyhow::Result<ExitCode> {
    let option = args
        .args
        .first()
        .map(|s| s.to_ascii_lowercase().replace('-', "/"))
        .unwrap_or_default();
    let value = args.args.get(1).cloned();
    let need = |what: &str| -> anyhow::Result<String> {
        match &value {
            Some(v) => Ok(v.clone()),
            None => bail!("{option} needs {what}"),
        }
    };
    // Host options (R26) go to the host's admin API.
    let host_mode = args.data_dir.is_some() || args.remote.target.is_some();
    let number = |what: &str| -> anyhow::Result<u32> {
        need(what)?
            .parse()
            .map_err(|_| anyhow::anyhow!("{option} needs {what} as a number"))
    };
    let host_change = match option.as_str() {
        "/sprt" => Some(serde_json::json!({ "port": number("a port")? })),
        "/sai" => Some(
            serde_json::json!({ "activation_interval_secs": number("minutes")?.saturating_mul(60) }),
        ),
        "/sri" => Some(
            serde_json::json!({ "renewal_interval_secs": number("minutes")?.saturating_mul(60) }),
        ),
        "/sdns" => Some(serde_json::json!({ "dns_publish": true })),
        "/cdns" => Some(serde_json::json!({ "dns_publish": false })),
        "/cpri" => Some(serde_json::json!({ "priority": "low" })),
        "/spri" => Some(serde_json::json!({ "priority": "normal" })),
        _ => None,
    };
    if host_change.is_some() || (host_mode && option == "/dli") {
        let dir = args
            .data_dir
            .clone()
            .unwrap_or_else(tally_host::paths::default_data_dir);
        let admin = crate::cmd::remote::Admin::resolve(&args.remote, &dir)?;
        let changed = host_change.is_some();
        let answer = match host_change {
            Some(change) => admin.patch("settings", &change).await?,
            None => admin.get("status").await?,
        };
        if args.opts.json {
            crate::output::json(&answer)?;
        } else if changed {
            crate::cmd::host::print_settings(&answer);
        } else {
            crate::cmd::host::print_remote_status(&answer);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (req, verbose) = match option.as_str() {
        "/ipk" => (
            AgentRequest::InstallKey {
                key: need("a key")?,
                confirm: false,
            },
            false,
        ),
        "/upk" => (AgentRequest::UninstallKey, false),
        "/ato" => (
            AgentRequest::Activate {
                host: None,
                authority: None,
            },
            false,
        ),
        "/dli" | "/xpr" => (AgentRequest::Status, false),
        "/dlv" => (AgentRequest::Status, true),
        "/skms" => (
            AgentRequest::SetHost {
                host: crate::util::parse_host(&need("HOST[:PORT]")?)
                    .map_err(|e| anyhow::anyhow!("/skms: {e}"))?,
            },
            false,
        ),
        "/ckms" => (AgentRequest::ClearHost, false),
        "/rearm" => (AgentRequest::Rearm, false),
        other => bail!("unknown option '{other}': see `tally slmgr --help`"),
    };
    let activate = matches!(req, AgentRequest::Activate { .. });
    if matches!(req, AgentRequest::Rearm) && !args.force {
        crate::cmd::client::refuse_rearm_when_licensed(&args.opts).await?;
    }
    let result = execute(&args.opts, req).await?;
    if option == "/xpr"
        && !args.opts.json
        && let Some(s) = &result.status
    {
        match (s.licensed, s.validity_end, s.grace_end) {
            (true, Some(t), _) => println!("Volume activation will expire {t}"),
            (false, _, Some(t)) => println!("{}: grace ends {t}", s.status),
            _ => println!("{}", s.status),
        }
        return Ok(ExitCode::SUCCESS);
    }
    report(&result, activate, args.opts.json, verbose)
}
