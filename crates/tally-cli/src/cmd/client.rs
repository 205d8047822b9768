//! `tally client`: install a key, activate, status, rearm, generalize, manual host (R11, R13,
//! R14, R20). Each command goes to the agent when one runs (so any local user can activate,
//! R13), and works directly on the state directory otherwise.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use tally_client::agent::{self, AgentError, AgentRequest};
use tally_client::codes;
use tally_client::fsmode;
use tally_client::ops::{Client, OpResult, StatusReport, TRUST_FILE};
use tally_client::rollover;
use tally_core::time::{Clock, SystemClock};
use tally_core::trust::parse_authority_public;
use tally_dns::discover::Discovery;

use crate::cmd::catalog::CatalogArg;
use crate::output;
use crate::paths;

/// Exit code of `activate` when the host answered but the count is below the threshold.
pub const EXIT_BELOW_THRESHOLD: u8 = 2;

/// Options shared by every client command.
#[derive(Args, Clone)]
pub struct ClientOpts {
    /// Client state directory [default: ~/.local/share/tally/client].
    #[arg(long, env = "TALLY_STATE_DIR", value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub catalog: CatalogArg,
    /// Authority public key to trust [default: STATE_DIR/authority.pub].
    #[arg(long, env = "TALLY_TRUST", value_name = "FILE", global = true)]
    pub trust: Option<PathBuf>,
    /// The agent's socket [default: STATE_DIR/agent.sock].
    #[arg(long, value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
    /// Work on the state directory even if an agent runs.
    #[arg(long, global = true)]
    pub no_agent: bool,
    /// Machine name reported to hosts [default: this machine's host name].
    #[arg(long, global = true)]
    pub machine_name: Option<String>,
    /// DNS server for discovery, ADDR[:PORT] [default: the system's, from /etc/resolv.conf].
    #[arg(long, env = "TALLY_DNS_SERVER", value_name = "ADDR", global = true)]
    pub dns_server: Option<String>,
    /// Domain to look for `_tally._tcp` SRV records in; repeat for a search list [default: the
    /// system's domain and search list].
    #[arg(
        long,
        env = "TALLY_DNS_SEARCH",
        value_name = "DOMAIN",
        value_delimiter = ',',
        global = true
    )]
    pub dns_search: Vec<String>,
    /// Seconds to wait for a host.
    #[arg(long, default_value_t = 10, global = true)]
    pub timeout: u64,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ClientOpts {
    /// The state directory.
    pub fn dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(paths::default_client_dir)
    }

    /// A direct client on the state directory.
    pub fn client(&self) -> anyhow::Result<Client> {
        let trust = match &self.trust {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let root =
                    parse_authority_public(&text).with_context(|| format!("{}", path.display()))?;
                // X8: a rollover file beside the trust file is verified and kept.
                rollover::keep_beside(&self.dir(), &root, path);
                Some(root)
            }
            None => None,
        };
        let server = match &self.dns_server {
            Some(s) => {
                let with_port = if s.contains(':') {
                    s.clone()
                } else {
                    format!("{s}:53")
                };
                Some(
                    with_port
                        .parse()
                        .with_context(|| format!("--dns-server {s}: expected ADDR[:PORT]"))?,
                )
            }
            None => None,
        };
        let discovery = Discovery {
            server,
            search: self.dns_search.clone(),
            label: String::new(),
        };
        let mut client = Client::new(&self.dir(), Arc::new(self.catalog.load()?), trust)
            .with_timeout(std::time::Duration::from_secs(self.timeout.clamp(1, 300)))
            .with_discovery(discovery);
        // X7: the vendor's update ships the newest revocation list beside the catalog.
        if let Some(file) = self.catalog.revocations_file() {
            client = client.with_update_file(file);
        }
        Ok(client)
    }
}

/// `tally client` options.
#[derive(Args)]
pub struct ClientArgs {
    #[command(flatten)]
    opts: ClientOpts,
    #[command(subcommand)]
    command: ClientCommand,
}

/// `tally client ...`
#[derive(Subcommand, Clone)]
pub enum ClientCommand {
    /// Install an edition's setup key (see `tally catalog list`): a host-activated client in its
    /// 30-day grace period (needs root or the agent's owner, R13).
    InstallKey {
        /// The key, e.g. FCK62-BC4QC-96T2H-XD989-PVGG9.
        key: String,
        /// Install a host key here even though it belongs on a host (R22).
        #[arg(long)]
        yes: bool,
    },
    /// Remove the key (needs root or the agent's owner).
    UninstallKey,
    /// Activate (or renew) now; exits 0 when activated, 2 when the count is below the
    /// threshold (R2), 1 on error. Any user may (R13).
    Activate {
        /// Host for this attempt, HOST[:PORT] (port 1688 when omitted; not a URL) [default: the
        /// manual or cached host, else DNS discovery].
        #[arg(long, value_name = "HOST:PORT", value_parser = crate::util::parse_host)]
        host: Option<String>,
        /// MAK clients (R25): the vendor's authority URL (remembered).
        #[arg(long, value_name = "URL")]
        authority: Option<String>,
        /// MAK clients: print the installation ID for activation by phone.
        #[arg(long, conflicts_with_all = ["confirmation", "authority", "host"])]
        offline: bool,
        /// MAK clients: apply the confirmation ID (digit groups, or a file holding them).
        #[arg(long, value_name = "ID")]
        confirmation: Option<String>,
    },
    /// Show the license state, timers and last result.
    Status,
    /// Reset the grace period to 30 days; at most 3 times (R11). Each rearm is spent for good:
    /// on an activated installation it is refused unless --force.
    Rearm {
        /// Rearm even though this installation is activated.
        #[arg(long)]
        force: bool,
    },
    /// Prepare an installation for imaging (R11): new CMID, grace reset, and no agent activates
    /// until the next agent start, so each deployed copy registers its own CMID at its first
    /// boot. Capture the image after this (shut down; do not restart the agent). With no rearm
    /// left it still makes a new CMID but leaves the timer and exits with an error.
    Generalize,
    /// Use this host (HOST[:PORT]); turns DNS discovery off and clears the cached host (R20).
    SetHost {
        /// FQDN, short name, IPv4 or IPv6 address, with optional port (not a URL).
        #[arg(value_parser = crate::util::parse_host)]
        host: String,
    },
    /// Forget the manual host; turns discovery back on (R20).
    ClearHost,
    /// Look for hosts in DNS (R19): what was queried, what was found, the order a client would
    /// try them in, and why any would be skipped.
    Discover,
    /// Copy an authority public key into the state directory as the key to trust (and the
    /// rollover file beside it, `authority.rollover`, if the vendor shipped one, X8).
    Trust {
        /// The authority public key file.
        file: PathBuf,
    },
    /// Keep the vendor's signed revocation list (X7; `tally authority revocations --out
    /// FILE`): from then on this client refuses every host it revokes. Lists also arrive from
    /// any host and from `revocations.tally` beside --catalog; an older list than the one
    /// held is refused.
    ImportRevocations {
        /// The list file (`tally-revocation-list-v1 ...`).
        file: PathBuf,
    },
    /// Accept a root rollover (X8): the vendor's rollover file, whose statements hand trust from
    /// the root this client trusts to a new one. Each must be signed by the trusted root (or
    /// one already accepted); what verifies is kept in STATE_DIR/authority.rollover.
    ImportRollover {
        /// The rollover file.
        file: PathBuf,
    },
}

impl ClientCommand {
    fn request(&self) -> Option<AgentRequest> {
        Some(match self {
            Self::InstallKey { key, yes } => AgentRequest::InstallKey {
                key: key.clone(),
                confirm: *yes,
            },
            Self::UninstallKey => AgentRequest::UninstallKey,
            Self::Activate {
                host, authority, ..
            } => AgentRequest::Activate {
                host: host.clone(),
                authority: authority.clone(),
            },
            Self::Status => AgentRequest::Status,
            Self::Rearm { .. } => AgentRequest::Rearm,
            Self::Generalize => AgentRequest::Generalize,
            Self::SetHost { host } => AgentRequest::SetHost { host: host.clone() },
            Self::ClearHost => AgentRequest::ClearHost,
            Self::Trust { .. }
            | Self::ImportRollover { .. }
            | Self::Discover
            | Self::ImportRevocations { .. } => return None,
        })
    }
}

/// Runs `req` through the agent when one runs, else directly.
pub async fn execute(opts: &ClientOpts, req: AgentRequest) -> anyhow::Result<OpResult> {
    let dir = opts.dir();
    if !opts.no_agent {
        let socket = opts
            .socket
            .clone()
            .unwrap_or_else(|| dir.join(agent::SOCKET_FILE));
        match agent::call(&socket, &req).await {
            Ok(result) => return Ok(result),
            Err(AgentError::NotRunning(_)) => {}
            Err(e) => return Err(e).context("the agent did not answer"),
        }
    }
    let client = opts.client()?;
    let now = SystemClock.now();
    Ok(match req {
        AgentRequest::Status => match client.status(now) {
            Ok(s) => OpResult {
                ok: true,
                code: 0,
                result: "status".into(),
                message: s.status.to_string(),
                count: None,
                threshold: None,
                status: Some(s),
            },
            Err(e) => return Err(e.into()),
        },
        AgentRequest::Activate {
            authority: Some(url),
            ..
        } => client.activate_mak(Some(&url), now).await,
        AgentRequest::Activate { host, .. } => {
            let name = opts
                .machine_name
                .clone()
                .unwrap_or_else(agent::machine_name);
            client.activate(host.as_deref(), &name, now).await
        }
        AgentRequest::InstallKey { key, confirm } => client.install_key(&key, confirm, now),
        AgentRequest::UninstallKey => client.uninstall_key(now),
        AgentRequest::Rearm => client.rearm(now),
        AgentRequest::Generalize => client.generalize(now),
        AgentRequest::SetHost { host } => client.set_host(&host, now),
        AgentRequest::ClearHost => client.clear_host(now),
    })
}

/// Prints a status report as text.
pub fn print_status(s: &StatusReport, verbose: bool) {
    println!(
        "Edition:        {}",
        s.edition.as_deref().unwrap_or("(no key installed)")
    );
    if let Some(k) = &s.partial_key {
        println!("Partial key:    {k}");
    }
    println!("License status: {}", s.status);
    match (s.validity_end, s.grace_end) {
        (Some(t), _) if s.licensed => println!("Valid until:    {t} ({} days left)", s.days_left),
        (_, Some(t)) if s.status == tally_client::LicenseStatus::InitialGrace => {
            println!("Grace until:    {t} ({} days left)", s.days_left)
        }
        _ => {}
    }
    if let Some(why) = &s.revoked {
        println!("Revoked:        {why}");
    }
    if verbose {
        println!("CMID:           {}", s.cmid);
        println!("Revocations:    list {} held", s.revocation_serial);
        if let Some(t) = s.next_attempt {
            println!("Next attempt:   {t}");
        }
        println!(
            "Intervals:      activation {} min, renewal {} min",
            s.activation_interval_secs / 60,
            s.renewal_interval_secs / 60
        );
        println!("Rearms left:    {}", s.rearms_left);
        match (&s.manual_host, &s.cached_host) {
            (Some(h), _) => println!("Host:           {h} (set by hand; discovery off)"),
            (None, Some(h)) => println!("Host:           {h} (cached)"),
            (None, None) => println!("Host:           (none yet)"),
        }
    }
    if let Some(a) = &s.last_attempt {
        println!(
            "Last attempt:   {} at {} -> {} (0x{:08X})",
            a.host.as_deref().unwrap_or("-"),
            a.at,
            a.result,
            a.code
        );
    }
}

/// Prints an operation's result and returns the process exit code.
pub fn report(
    result: &OpResult,
    activate: bool,
    json: bool,
    verbose: bool,
) -> anyhow::Result<ExitCode> {
    if json && result.result == "status" {
        // `status --json` prints the report itself.
        output::json(&result.status)?;
    } else if json {
        let mut v = serde_json::to_value(result)?;
        v["code"] = serde_json::Value::String(format!("0x{:08X}", result.code));
        // Code 0 is named for activations; any other operation that worked just succeeded.
        if !activate && result.code == 0 {
            v["result"] = serde_json::Value::String("success".into());
        }
        output::json(&v)?;
    } else if result.result == "status" {
        if let Some(s) = &result.status {
            print_status(s, verbose);
        }
    } else if result.ok || result.code == codes::BELOW_THRESHOLD {
        println!("{} (0x{:08X})", result.message, result.code);
    } else {
        eprintln!(
            "error: {} (0x{:08X} {})",
            result.message, result.code, result.result
        );
    }
    Ok(if result.ok {
        ExitCode::SUCCESS
    } else if activate && result.code == codes::BELOW_THRESHOLD {
        ExitCode::from(EXIT_BELOW_THRESHOLD)
    } else {
        ExitCode::FAILURE
    })
}

/// Runs a client command.
pub async fn run(args: ClientArgs) -> anyhow::Result<ExitCode> {
    if let ClientCommand::Trust { file } = &args.command {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        parse_authority_public(&text).with_context(|| format!("{}", file.display()))?;
        let dir = args.opts.dir();
        // X4: the trust anchor is readable by all (0644) in a directory only its owner may
        // write (0755), whatever the umask, so no other local user can replace it.
        fsmode::create_dir(&dir, fsmode::SHARED_DIR)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let target = dir.join(TRUST_FILE);
        fsmode::write_atomic(&target, text.as_bytes(), fsmode::PUBLIC_FILE)
            .with_context(|| format!("cannot write {}", target.display()))?;
        println!("This client now trusts {}.", file.display());
        let root = parse_authority_public(&text).with_context(|| format!("{}", file.display()))?;
        if let Some(done) = rollover::import_beside(&dir, &root, file)
            .with_context(|| format!("{}", rollover::beside(file).display()))?
        {
            println!(
                "Root rollover accepted from {}: trusted root now {}.",
                rollover::beside(file).display(),
                done.current_root_id
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let ClientCommand::ImportRollover { file } = &args.command {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let done = args
            .opts
            .client()?
            .import_rollover(&text)
            .with_context(|| format!("{}", file.display()))?;
        if args.opts.json {
            output::json(&done)?;
        } else {
            println!(
                "Root rollover {}: this client trusts root {} ({} rollover statements, kept in {}).",
                if done.added > 0 {
                    "accepted"
                } else {
                    "already known"
                },
                done.current_root_id,
                done.chain_length,
                done.file.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let ClientCommand::ImportRevocations { file } = &args.command {
        let now = tally_core::time::Clock::now(&tally_core::time::SystemClock);
        let done = args
            .opts
            .client()?
            .import_revocations_file(file, now)
            .map_err(|e| anyhow::anyhow!("{e} ({})", tally_client::codes::name(e.code())))?;
        if args.opts.json {
            output::json(&done)?;
        } else if done.replaced {
            println!(
                "Revocation list {} kept; hosts it revokes are refused from now on.",
                done.serial
            );
        } else {
            println!(
                "Revocation list {} is already held; nothing changed.",
                done.serial
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let ClientCommand::Discover = &args.command {
        let report = args.opts.client()?.discover().await?;
        if args.opts.json {
            output::json(&report)?;
        } else {
            for note in &report.found.notes {
                println!("{note}");
            }
            for (i, p) in report.probes.iter().enumerate() {
                let c = report.order.iter().find(|c| c.target == p.host);
                println!(
                    "{}. {} {} (priority {}, weight {}): {}",
                    i + 1,
                    p.host,
                    p.address.as_deref().unwrap_or("-"),
                    c.map_or(0, |c| c.priority),
                    c.map_or(0, |c| c.weight),
                    if p.reachable {
                        "reachable".to_owned()
                    } else {
                        p.reason.clone().unwrap_or_default()
                    }
                );
            }
        }
        return Ok(if report.probes.iter().any(|p| p.reachable) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    // R25 offline MAK activation works on the state directly.
    if let ClientCommand::Activate { offline: true, .. } = &args.command {
        let groups = args.opts.client()?.mak_installation_id(SystemClock.now())?;
        if args.opts.json {
            output::json(
                &serde_json::json!({ "installation_id": groups.join(" "), "groups": groups }),
            )?;
        } else {
            println!(
                "Installation ID ({} groups): give it to the vendor:",
                groups.len()
            );
            for line in groups.chunks(6) {
                println!("  {}", line.join(" "));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let ClientCommand::Activate {
        confirmation: Some(c),
        ..
    } = &args.command
    {
        let text = crate::util::text_or_file(c)?;
        let result = args.opts.client()?.mak_confirm(&text, SystemClock.now());
        return report(&result, true, args.opts.json, false);
    }
    if let ClientCommand::Rearm { force: false } = &args.command {
        refuse_rearm_when_licensed(&args.opts).await?;
    }
    let Some(req) = args.command.request() else {
        return Ok(ExitCode::SUCCESS);
    };
    let activate = matches!(req, AgentRequest::Activate { .. });
    let verbose = matches!(req, AgentRequest::Status);
    let generalize = matches!(req, AgentRequest::Generalize);
    let result = execute(&args.opts, req).await?;
    let code = report(&result, activate, args.opts.json, verbose)?;
    if generalize && !args.opts.json {
        println!("{GENERALIZED_NOTE}");
    }
    Ok(code)
}

/// What generalize leaves for the admin to do (R11).
pub const GENERALIZED_NOTE: &str = "No agent activates this installation until the next agent \
start (service restart or boot): capture the image now. Each deployed copy activates with its \
own CMID at its first start.";

/// R11: a rearm is spent for good; on an activated installation it is almost always a mistake.
pub async fn refuse_rearm_when_licensed(opts: &ClientOpts) -> anyhow::Result<()> {
    // When the status cannot be read, the rearm itself reports why.
    let Ok(status) = execute(opts, AgentRequest::Status).await else {
        return Ok(());
    };
    if let Some(s) = status.status.filter(|s| s.licensed) {
        anyhow::bail!(
            "this installation is activated ({}, {} days left): a rearm would spend one of its \
             {} rearms for nothing; pass --force to rearm anyway",
            s.status,
            s.days_left,
            s.rearms_left
        );
    }
    Ok(())
}
