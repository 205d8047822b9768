//! `tally host set`: live settings (R26) through the admin API of the running host (or of a
//! `--target`).

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use tally_host::config::Interval;

use super::DirArgs;
use crate::cmd::remote::{Admin, RemoteArgs};
use crate::output::json;

/// `tally host set` options: each is optional; what is given changes.
#[derive(Args, Clone, Debug)]
pub struct SetArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// The activation port (R15); the host rebinds without dropping requests in flight.
    #[arg(long)]
    pub port: Option<u16>,
    /// The listen address, ADDR:PORT (rebinds the same way).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Retry interval sent to clients: minutes, or with a unit (`30s`, `2h`).
    #[arg(long, value_name = "MIN")]
    pub activation_interval: Option<Interval>,
    /// Renewal interval sent to clients: minutes, or with a unit (`7d`).
    #[arg(long, value_name = "MIN")]
    pub renewal_interval: Option<Interval>,
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
    let admin = Admin::resolve(&args.remote, &args.dir.resolve()?)?;
    let settings = admin
        .patch("settings", &serde_json::Value::Object(change))
        .await?;
    if args.json {
        json(&settings)?;
    } else {
        super::print_settings(&settings);
    }
    Ok(ExitCode::SUCCESS)
}
