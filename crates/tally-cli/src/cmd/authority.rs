//! `tally authority`: the vendor's side, CLI only.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use tally_authority::dir;
use tally_core::keys::{KeyGroup, ProductKey};
use tally_core::time::{Clock, SystemClock};
use tally_core::trust::{armor, labels, parse_host_public};

use crate::output;

mod revocations;
use crate::util::text_or_file;

/// `tally authority ...`
#[derive(Subcommand)]
pub enum AuthorityCommand {
    /// Create the vendor's root key in DIR (authority.key, mode 0600) and authority.pub; with
    /// --pkcs11-module, in a PKCS#11 token instead (X8: no key file is ever written).
    Init {
        /// Directory to hold the authority's keys.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Where the root key is made.
        #[command(flatten)]
        token: crate::cmd::authority_root::TokenArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hand trust from this authority's root to a new root (X8): both roots sign a rollover
    /// statement; the new authority directory takes over the keys issued so far. Clients and
    /// hosts that trust the old root accept the new one once they have the --out file.
    Rollover(crate::cmd::authority_root::RolloverArgs),
    /// Issue a host key for a key group and product generation (R21).
    IssueHostKey {
        /// The authority directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Where the authority keeps its state.
        #[command(flatten)]
        db: DatabaseArg,
        /// Key group: client-vl, server-a, server-b or server-c. A key activates its group and
        /// every group below it.
        #[arg(long)]
        group: KeyGroup,
        /// Newest product generation the key activates (0-15); older generations are included.
        #[arg(long, default_value_t = 1)]
        generation: u8,
        /// Free text kept with the key (customer, order).
        #[arg(long, default_value = "")]
        note: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the authority's HTTP API (online and offline host activation, operator endpoints).
    Run {
        /// The authority directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Where the authority keeps its state.
        #[command(flatten)]
        db: DatabaseArg,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: std::net::SocketAddr,
    },
    /// List issued keys and their use; with --serial, one key and its activations.
    Keys {
        /// The authority directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Where the authority keeps its state.
        #[command(flatten)]
        db: DatabaseArg,
        /// One key.
        #[arg(long)]
        serial: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Raise a key's limits (R23); the reason is kept in the audit log.
    Exception {
        /// The authority directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Where the authority keeps its state.
        #[command(flatten)]
        db: DatabaseArg,
        /// The key's serial.
        #[arg(long)]
        serial: u32,
        /// More distinct hosts.
        #[arg(long, default_value_t = 0)]
        hosts: u32,
        /// More activations per host.
        #[arg(long, default_value_t = 0)]
        activations: u32,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Take trust back (X7): revoke a key (--serial: no new activation; its certificates or
    /// MAK activations go on the revocation list) or one host certificate (--certificate).
    /// Clients that get the list (through any host, or beside the catalog in an update)
    /// refuse revoked hosts.
    Revoke(revocations::RevokeArgs),
    /// Show the signed revocation list (X7); --out writes it for air-gapped hosts and for
    /// software updates.
    Revocations(revocations::RevocationsArgs),
    /// Turn a host's installation ID (read out by phone, or a file) into a confirmation ID.
    Confirm {
        /// The authority directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Where the authority keeps its state.
        #[command(flatten)]
        db: DatabaseArg,
        /// The installation ID's digit groups, or a file holding them.
        installation_id: String,
        /// Also write the confirmation ID to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a MAK that activates up to BUDGET machines directly with the authority (R25).
    IssueMak {
        /// The authority directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Where the authority keeps its state.
        #[command(flatten)]
        db: DatabaseArg,
        /// Distinct machines it may activate.
        #[arg(long)]
        budget: u32,
        /// Free text kept with the key.
        #[arg(long, default_value = "")]
        note: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a host's compliance report (R6): signed by a host this authority certified, and
    /// not edited since.
    VerifyReport {
        /// The authority directory (for its public key).
        #[arg(long, value_name = "DIR", required_unless_present = "trust")]
        dir: Option<PathBuf>,
        /// Or the authority public key file.
        #[arg(long, value_name = "FILE")]
        trust: Option<PathBuf>,
        /// The report (CSV or JSON).
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the transparency log of everything the authority signed (X8): a head signed now
    /// and the entries, page by page (--from, --limit).
    Log(crate::cmd::authority_log::LogArgs),
    /// Sign a catalog so hosts can import it (R24); the signed catalog is logged (X8).
    SignCatalog {
        /// The authority directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Where the authority keeps its state (the log).
        #[command(flatten)]
        db: DatabaseArg,
        /// The catalog (TOML).
        file: PathBuf,
        /// Where to write the signed catalog.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Certify a host's public key for the group of a host key it holds (R16), outside the
    /// activation limits; the certificate is logged (X8).
    Certify {
        /// The authority directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Where the authority keeps its state (the log).
        #[command(flatten)]
        db: DatabaseArg,
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

/// `--database URL`: the authority's state in PostgreSQL instead of `DIR/authority.db`.
#[derive(clap::Args)]
pub struct DatabaseArg {
    /// The authority's database: a postgres://USER[:PASSWORD]@HOST[:PORT][,HOST[:PORT]...]/DB
    /// URL (several `tally authority run` processes may share it). `tally authority run`
    /// records it in DIR (database.url; the password in database.password, mode 0600), so later
    /// commands on DIR need no flag. Default: the database DIR remembers, else the SQLite file
    /// authority.db in DIR. The keys and the operator token stay in DIR.
    #[arg(long = "database", env = "TALLY_DATABASE_URL", value_name = "URL")]
    pub(crate) database: Option<String>,
}

/// The one place that opens the authority's service and store (keys from `dir`, state from
/// `--database` or `dir`).
pub(crate) async fn service(
    dir: &std::path::Path,
    db: &DatabaseArg,
) -> anyhow::Result<tally_authority::service::Service> {
    Ok(dir::open_service_on(
        dir,
        db.database.as_deref(),
        std::sync::Arc::new(SystemClock),
    )
    .await?)
}

/// Prints an issued key: the key alone, or its whole record as JSON.
fn print_key(key: &tally_authority::store::KeyRecord, json: bool) -> anyhow::Result<()> {
    if json {
        output::json(key)
    } else {
        println!("{}", key.key);
        Ok(())
    }
}

pub(crate) fn service_err(e: tally_authority::service::ServiceError) -> anyhow::Error {
    anyhow::anyhow!("{e} ({})", e.code())
}

/// Runs an authority command.
pub async fn run(cmd: AuthorityCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuthorityCommand::Init {
            dir: d,
            token,
            json,
        } => crate::cmd::authority_root::init(&d, &token, json)?,
        AuthorityCommand::Rollover(args) => crate::cmd::authority_root::rollover(&args)?,
        AuthorityCommand::IssueHostKey {
            dir: d,
            db,
            group,
            generation,
            note,
            json,
        } => {
            let req = tally_authority::service::IssueRequest {
                group,
                generation,
                note,
            };
            let key = service(&d, &db)
                .await?
                .issue_host_key(&req, "cli")
                .await
                .map_err(service_err)?;
            print_key(&key, json)?;
        }
        AuthorityCommand::IssueMak {
            dir: d,
            db,
            budget,
            note,
            json,
        } => {
            let req = tally_authority::service::MakIssueRequest { budget, note };
            let key = service(&d, &db)
                .await?
                .issue_mak(&req, "cli")
                .await
                .map_err(service_err)?;
            print_key(&key, json)?;
        }
        AuthorityCommand::VerifyReport {
            dir: d,
            trust,
            file,
            json,
        } => {
            let key_file = match (trust, d) {
                (Some(t), _) => t,
                (None, Some(d)) => d.join(dir::PUBLIC_FILE),
                (None, None) => anyhow::bail!("pass --dir or --trust"),
            };
            let anchor =
                tally_core::trust::parse_authority_public(&std::fs::read_to_string(&key_file)?)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let verified = tally_admin::report::verify(&text, &anchor)
                .map_err(|e| anyhow::anyhow!("{} does not verify: {e}", file.display()))?;
            if json {
                output::json(&verified)?;
            } else {
                println!(
                    "{}: verified; signed by a {} host; {} clients.",
                    file.display(),
                    verified.key_group,
                    verified.total
                );
            }
        }
        AuthorityCommand::Log(args) => return crate::cmd::authority_log::run(args).await,
        AuthorityCommand::SignCatalog {
            dir: d,
            db,
            file,
            out,
        } => {
            let svc = service(&d, &db).await?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let unsigned = tally_core::catalog::signed::prepare(&text)
                .with_context(|| format!("{}", file.display()))?;
            let signature = svc.authority().sign(&unsigned.message())?;
            let signed = unsigned.with_signature(&signature);
            // X8: logged before it is written out, so no signed catalog leaves unlogged.
            let index = svc
                .append(tally_log::EntryKind::Catalog, signed.clone().into_bytes())
                .await
                .map_err(service_err)?;
            tally_authority::dir::write_public(&out, signed.as_bytes())
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "Signed catalog written to {} (log entry {index}). On each host: tally host catalog import {}",
                out.display(),
                out.display()
            );
        }
        AuthorityCommand::Run { dir: d, db, listen } => {
            let bound = tally_authority::server::bind(
                &d,
                db.database.as_deref(),
                listen,
                std::sync::Arc::new(SystemClock),
            )
            .await?;
            let addr = bound.addr();
            tracing::info!(%addr, dir = %d.display(), "authority started");
            println!("tally authority listening on {addr}");
            let shutdown = tokio_util::sync::CancellationToken::new();
            crate::util::spawn_signal_handler(shutdown.clone());
            bound.serve(shutdown).await;
            tracing::info!("authority stopped");
        }
        AuthorityCommand::Keys {
            dir: d,
            db,
            serial,
            json,
        } => {
            let svc = service(&d, &db).await?;
            match serial {
                Some(s) => {
                    let detail = svc.key(s).await.map_err(service_err)?;
                    if json {
                        output::json(&detail)?;
                    } else {
                        let k = &detail.key;
                        println!(
                            "{} serial {} {} gen {}: {}/{} hosts, {} activations per host{}",
                            k.key,
                            k.serial,
                            k.group.as_deref().unwrap_or("-"),
                            k.generation.unwrap_or(0),
                            k.hosts_used,
                            k.max_hosts,
                            k.max_activations,
                            if k.revoked_at.is_some() {
                                " (REVOKED)"
                            } else {
                                ""
                            }
                        );
                        for a in &detail.activations {
                            println!(
                                "  hardware {} activations {} first {} last {}",
                                a.hardware, a.count, a.first_at, a.last_at
                            );
                        }
                    }
                }
                None => {
                    let keys = svc.keys().await.map_err(service_err)?;
                    if json {
                        output::json(&keys)?;
                    } else {
                        let mut t = crate::output::Table::new(&[
                            "SERIAL", "KEY", "GROUP", "GEN", "HOSTS", "STATE", "NOTE",
                        ]);
                        for k in &keys {
                            t.row(vec![
                                k.serial.to_string(),
                                k.key.clone(),
                                k.group.clone().unwrap_or_default(),
                                k.generation.map(|g| g.to_string()).unwrap_or_default(),
                                format!("{}/{}", k.hosts_used, k.max_hosts),
                                if k.revoked_at.is_some() {
                                    "revoked".into()
                                } else {
                                    "active".into()
                                },
                                k.note.clone(),
                            ]);
                        }
                        print!("{}", t.render());
                    }
                }
            }
        }
        AuthorityCommand::Exception {
            dir: d,
            db,
            serial,
            hosts,
            activations,
            reason,
        } => {
            let req = tally_authority::service::ExceptionRequest {
                extra_hosts: hosts,
                extra_activations: activations,
                reason,
            };
            let k = service(&d, &db)
                .await?
                .exception(serial, &req, "cli")
                .await
                .map_err(service_err)?;
            println!(
                "Key {serial}: now {} hosts and {} activations per host.",
                k.max_hosts, k.max_activations
            );
        }
        AuthorityCommand::Revoke(args) => revocations::revoke(args).await?,
        AuthorityCommand::Revocations(args) => revocations::revocations(args).await?,
        AuthorityCommand::Confirm {
            dir: d,
            db,
            installation_id,
            out,
            json,
        } => {
            let id = text_or_file(&installation_id)?;
            let groups = service(&d, &db)
                .await?
                .confirm(&id)
                .await
                .map_err(service_err)?;
            if let Some(out) = &out {
                tally_authority::dir::write_public(
                    out,
                    format!("{}\n", groups.join(" ")).as_bytes(),
                )
                .with_context(|| format!("cannot write {}", out.display()))?;
            }
            if json {
                output::json(&json!({ "confirmation_id": groups.join(" "), "groups": groups }))?;
            } else {
                println!("Confirmation ID (read it to the customer, group by group):");
                for line in groups.chunks(6) {
                    println!("  {}", line.join(" "));
                }
            }
        }
        AuthorityCommand::Certify {
            dir: d,
            db,
            host_key,
            host_pub,
            out,
        } => {
            let svc = service(&d, &db).await?;
            let authority = svc.authority();
            let text = std::fs::read_to_string(&host_pub)
                .with_context(|| format!("cannot read host public key {}", host_pub.display()))?;
            let public =
                parse_host_public(&text).with_context(|| format!("{}", host_pub.display()))?;
            let cert = authority.certify(host_key, &public, SystemClock.now())?;
            // X8: logged before it is written out.
            let index = svc
                .append(
                    tally_log::EntryKind::HostCertificateManual,
                    cert.to_bytes().to_vec(),
                )
                .await
                .map_err(service_err)?;
            tally_authority::dir::write_public(
                &out,
                armor(labels::HOST_CERTIFICATE, &cert.to_bytes()).as_bytes(),
            )
            .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "Certificate written to {} (log entry {index}).",
                out.display()
            );
            println!("On the host: tally host install-cert {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
