//! Setting a host up: key pair, certificate, host key (R22), activation with the authority,
//! catalog import (R24).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use tally_client::authority::AuthorityClientError;
use tally_host::activation::{self, Method};
use tally_host::{HostError, catalog, identity, paths, rollover};

use super::DirArgs;
use crate::output::json;
use crate::util::text_or_file;

/// `tally host init`.
pub fn init(dir: &DirArgs) -> anyhow::Result<ExitCode> {
    let dir = dir.resolve()?;
    if identity::ensure_host_key(&dir)? {
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

/// `tally host install-cert FILE [--trust FILE]`.
pub fn install_cert(dir: &DirArgs, file: &Path, trust: Option<&Path>) -> anyhow::Result<ExitCode> {
    let dir = dir.resolve()?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    if let Some(t) = trust {
        import_beside(&dir, t)?;
    }
    let trust = trust
        .map(|t| std::fs::read_to_string(t).with_context(|| format!("cannot read {}", t.display())))
        .transpose()?;
    identity::install_certificate_text(&dir, &text, trust.as_deref())
        .with_context(|| format!("{}", file.display()))?;
    println!(
        "Certificate installed. Start the host with: tally host run --data-dir {}",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `tally host install-key KEY`.
pub async fn install_key(dir: &DirArgs, key: &str) -> anyhow::Result<ExitCode> {
    let config = dir.config()?;
    let dir = config.data_dir;
    let fields = identity::install_host_key(&dir, &config.database, key).await?;
    let key = identity::installed_host_key(&dir)?;
    println!(
        "Host key for {} generation {} installed (ends {}). Activate it once: \
         tally host activate --online URL   or   tally host activate --offline",
        fields.group,
        fields.generation,
        key.partial()
    );
    Ok(ExitCode::SUCCESS)
}

/// `tally host activate --online URL | --offline | --confirmation ID`.
pub async fn activate(
    dir: &DirArgs,
    online: Option<String>,
    offline: bool,
    confirmation: Option<String>,
    trust: Option<PathBuf>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let config = dir.config()?;
    let (dir, database) = (config.data_dir, config.database);
    if offline {
        let id = activation::installation_id(&dir)?;
        if as_json {
            json(&serde_json::json!({
                "installation_id": id.groups.join(" "),
                "groups": id.groups,
                "file": id.file,
            }))?;
        } else {
            println!(
                "Installation ID ({} groups; also in {}):",
                id.groups.len(),
                id.file.display()
            );
            for line in id.groups.chunks(6) {
                println!("  {}", line.join(" "));
            }
            println!(
                "Give it to the vendor; then: tally host activate --confirmation \"DIGITS\" --trust authority.pub"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let method = match (online, confirmation) {
        (_, Some(c)) => Method::Confirmation(text_or_file(&c)?),
        (Some(url), None) => Method::Online(url),
        (None, None) => bail!("say how: --online URL, --offline, or --confirmation ID"),
    };
    if let Some(t) = &trust {
        import_beside(&dir, t)?;
    }
    let trust = trust
        .map(|p| {
            std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
        })
        .transpose()?;
    let activated = match activation::activate(&dir, &database, method, trust).await {
        Ok(a) => a,
        Err(HostError::AuthorityApi(AuthorityClientError::Refused {
            body,
            error,
            message,
        })) => {
            if as_json {
                json(&body)?;
            }
            bail!("the authority refused ({error}): {message}");
        }
        Err(e) => return Err(e.into()),
    };
    if as_json {
        json(&serde_json::json!({
            "activated": true,
            "key_group": activated.group.name(),
            "generation": activated.generation,
            "log_index": activated.log_index,
        }))?;
    } else {
        println!(
            "Host activated for {} generation {}. Start it with: tally host run --data-dir {}",
            activated.group,
            activated.generation,
            dir.display()
        );
        match activated.log_index {
            Some(i) => println!(
                "The certificate is entry {i} of the authority's transparency log; the proof is in {}.",
                dir.join(tally_host::paths::CERTIFICATE_PROOF).display()
            ),
            None => println!(
                "No log proof yet (X8). When this host can reach the authority: {} --data-dir {}",
                tally_host::log_proof::FETCH_HINT,
                dir.display()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tally host catalog import FILE`: refuses a catalog not newer than the one in force, the
/// configured catalog included (R24).
pub fn import_catalog(dir: &DirArgs, file: &Path) -> anyhow::Result<ExitCode> {
    let config = dir.config()?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let catalog = catalog::import(&config.data_dir, config.catalog.as_deref(), &text)
        .with_context(|| format!("{} refused", file.display()))?;
    println!(
        "Catalog '{}' version {} imported ({} editions); a running host loads it within seconds.",
        catalog.name(),
        catalog.version(),
        catalog.editions().len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `tally host import-revocations FILE` (X7).
pub fn import_revocations(dir: &DirArgs, file: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let config = dir.config()?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let done = tally_host::revocations::import(&config.data_dir, &text)
        .with_context(|| format!("{} refused", file.display()))?;
    if as_json {
        crate::output::json(&done)?;
        return Ok(ExitCode::SUCCESS);
    }
    if done.replaced {
        println!(
            "Revocation list {} imported ({} entries) into {}; a running host relays it within a second.",
            done.serial,
            done.entries,
            done.file.display()
        );
    } else {
        println!(
            "Revocation list {} is already held; nothing changed.",
            done.serial
        );
    }
    if let Some(why) = &done.revokes_this_host {
        println!(
            "WARNING: this list revokes this host: {why}. It answers no activation from now on; ask the vendor for a new host key."
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `tally host log-proof`: fetch, check and keep the proof that this host's certificate is in
/// the authority's transparency log (X8).
pub async fn log_proof(dir: &DirArgs, authority: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let config = dir.config()?;
    let proof = tally_host::log_proof::fetch(&config.data_dir, authority).await?;
    let file = config.data_dir.join(tally_host::paths::CERTIFICATE_PROOF);
    if as_json {
        json(&serde_json::json!({
            "proven": true,
            "file": file,
            "index": proof.index,
            "tree_size": proof.head.size,
        }))?;
    } else {
        println!(
            "The certificate is entry {} of the authority's log (head of size {}); proof kept in {}.",
            proof.index,
            proof.head.size,
            file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// X8: imports the rollover file beside a `--trust` file, if there is one.
fn import_beside(dir: &Path, trust: &Path) -> anyhow::Result<()> {
    let beside = trust.with_extension("rollover");
    if let Some(done) = rollover::import_beside(dir, trust)
        .with_context(|| format!("{} refused", beside.display()))?
        && done.added > 0
    {
        println!(
            "Root rollover accepted from {}: this host now also trusts root {}.",
            beside.display(),
            done.current_root_id
        );
    }
    Ok(())
}

/// `tally host import-rollover FILE` (X8).
pub fn import_rollover(dir: &DirArgs, file: &Path, as_json: bool) -> anyhow::Result<ExitCode> {
    let dir = dir.resolve()?;
    let done = rollover::import_file(&dir, file).with_context(|| format!("{}", file.display()))?;
    if as_json {
        json(&done)?;
    } else if done.added == 0 {
        println!(
            "{}: already accepted; this host trusts root {} ({} rollover statements).",
            file.display(),
            done.current_root_id,
            done.chain_length
        );
    } else {
        println!(
            "Root rollover accepted: this host now trusts root {} ({} rollover statements, kept in {}).",
            done.current_root_id,
            done.chain_length,
            dir.join(rollover::ROLLOVER_FILE).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
