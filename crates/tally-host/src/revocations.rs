//! The revocation list a host holds (X7): imported from a file (`tally host
//! import-revocations`, air-gapped hosts), fetched from the authority on a schedule (online
//! hosts with `revocations_url`), relayed to every client that asks, and obeyed: a host whose
//! own certificate is on the list answers no activation (`host_revoked`) and says why in its
//! log, its status and its dashboard.
//!
//! The list lives in `DATA_DIR/revocations.tally`, verified against `DATA_DIR/authority.pub`
//! whenever it is read; an import never replaces a list with an older one (no rollback).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tally_core::revocation::{Held, Offer, VerifiedList, describe};
use tally_core::trust::{TrustAnchor, parse_authority_public};
use tally_server::HostService;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{HostError, events, paths};

/// How often the running host looks at the list file.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// What an import did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Imported {
    /// The serial now held.
    pub serial: u32,
    /// Whether the offered list replaced the one held (false: it was the same serial).
    pub replaced: bool,
    /// Entries in the list.
    pub entries: usize,
    /// Why this host's own certificate is revoked, when the list revokes it.
    pub revokes_this_host: Option<String>,
    /// The file written.
    pub file: PathBuf,
}

fn anchor(dir: &Path) -> Result<TrustAnchor, HostError> {
    let path = dir.join(paths::AUTHORITY_PUB);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        HostError::Invalid(format!(
            "{} is missing: a revocation list is verified against the authority key, activate this host first",
            path.display()
        ))
    })?;
    parse_authority_public(&text).map_err(HostError::format(path))?;
    // A list signed by a root a rollover handed trust to verifies too (X8).
    crate::rollover::anchor(dir, &text)
}

/// The list held in `dir` (empty when there is none), verified.
pub fn load(dir: &Path) -> Result<Held, HostError> {
    let path = dir.join(paths::REVOCATIONS);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Held::default());
    };
    let list = VerifiedList::from_file_text(&text, &anchor(dir)?)
        .map_err(|e| HostError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(Held::new(Some(list)))
}

/// Imports the list file `text` into `dir`: it must verify under the host's authority key and
/// not be older than the list held. A running host picks it up within a second.
pub fn import(dir: &Path, text: &str) -> Result<Imported, HostError> {
    let offered = VerifiedList::from_file_text(text, &anchor(dir)?)
        .map_err(|e| HostError::Invalid(format!("the revocation list is refused: {e}")))?;
    store(dir, offered)
}

/// The lock file that orders imports of one data directory (`DATA_DIR/revocations.lock`).
pub const IMPORT_LOCK: &str = "revocations.lock";

/// Takes the data directory's import lock, waiting for another import to finish: the running
/// host's scheduled fetch and an admin's `tally host import-revocations` may run at once, and
/// each must compare with the list the other wrote, or the older list could be written last
/// (a roll-back, X7). The kernel's lock (`flock`) goes away with its process.
fn import_lock(dir: &Path) -> Result<std::fs::File, HostError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(IMPORT_LOCK);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(tally_store::fsmode::PRIVATE_FILE)
        .open(&path)
        .map_err(HostError::write(&path))?;
    file.lock().map_err(HostError::write(&path))?;
    Ok(file)
}

/// Imports a verified list (the scheduled fetch and [`import`]), under the import lock.
fn store(dir: &Path, offered: VerifiedList) -> Result<Imported, HostError> {
    let _lock = import_lock(dir)?;
    let mut held = load(dir)?;
    let replaced = held
        .offer(offered.clone())
        .map_err(|e| HostError::Invalid(e.to_string()))?
        == Offer::Newer;
    let file = dir.join(paths::REVOCATIONS);
    if replaced {
        tally_store::fsmode::write_atomic(
            &file,
            offered.to_file_text().as_bytes(),
            tally_store::fsmode::PUBLIC_FILE,
        )
        .map_err(HostError::write(&file))?;
    }
    let own = crate::identity::load_identity(dir).ok();
    Ok(Imported {
        serial: held.serial(),
        replaced,
        entries: offered.list().entries.len(),
        revokes_this_host: own
            .and_then(|id| held.revokes_certificate(id.certificate()))
            .map(|e| describe(&e)),
        file,
    })
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Puts `held` into the running host, logging and recording what changed.
pub async fn apply(service: &HostService, held: Held) {
    let serial = held.serial();
    let session = service.session();
    let own = held.revokes_certificate(session.identity().certificate());
    let data = serde_json::json!({
        "serial": serial,
        "entries": held.list().map_or(0, |l| l.list().entries.len()),
    });
    service.set_revocations(Arc::new(held));
    match own {
        Some(entry) => {
            let why = describe(&entry);
            error!(
                serial,
                reason = entry.reason.name(),
                "this host's certificate is revoked: it answers no activation (clients are told host_revoked and go to another host). {why}. Ask the vendor for a new host key, install it with `tally host install-key`, and activate again"
            );
            let mut data = data;
            data["reason"] = entry.reason.name().into();
            events::record(
                service.store(),
                events::HOST_REVOKED,
                "error",
                &format!("this host's certificate is revoked: {why}"),
                data,
            )
            .await;
        }
        None => {
            info!(serial, "revocation list loaded (X7)");
            events::record(
                service.store(),
                events::REVOCATIONS_LOADED,
                "info",
                "revocation list loaded",
                data,
            )
            .await;
        }
    }
}

/// Watches `DATA_DIR/revocations.tally` and loads each newer list into the running host. A
/// list that does not verify is refused and the previous one stays.
pub async fn watch(dir: PathBuf, service: Arc<HostService>, shutdown: CancellationToken) {
    let path = dir.join(paths::REVOCATIONS);
    // The first tick always looks (a fetch or import may have written the file between the
    // start's load and this task's first look).
    let mut seen = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match load(&dir) {
            Ok(held) if held.serial() > service.session().revocations().serial() => {
                apply(&service, held).await;
            }
            Ok(_) => {}
            Err(e) => warn!(
                error = %crate::error::chain(&e),
                "revocation list refused; still holding the previous one"
            ),
        }
    }
}

/// Online hosts: fetches the authority's list from `url` every `every` (first at once) and
/// imports it when newer. Failures are logged and retried at the next tick; the host keeps
/// serving with the list it holds.
pub async fn fetch_loop(
    dir: PathBuf,
    url: String,
    every: Duration,
    service: Arc<HostService>,
    shutdown: CancellationToken,
) {
    let client = match tally_client::authority::AuthorityClient::new(&url, Duration::from_secs(10))
    {
        Ok(c) => c,
        Err(e) => {
            warn!(%url, error = %e, "revocations_url is not usable; not fetching revocation lists");
            return;
        }
    };
    loop {
        match client.revocations().await {
            Ok(text) => match import(&dir, &text) {
                Ok(done) if done.replaced => {
                    info!(serial = done.serial, %url, "newer revocation list fetched");
                    match load(&dir) {
                        Ok(held) if held.serial() > service.session().revocations().serial() => {
                            apply(&service, held).await;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            warn!(error = %crate::error::chain(&e), "fetched revocation list unreadable")
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(%url, error = %crate::error::chain(&e), "fetched revocation list refused")
                }
            },
            Err(e) => {
                warn!(%url, error = %e, "could not fetch the revocation list; retrying later")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use ed25519_dalek::Signer;
    use tally_core::time::Timestamp;
    use tally_proto::revocation::{Entry, Reason, Subject};

    use super::*;

    fn list(key: &ed25519_dalek::SigningKey, serial: u32) -> String {
        tally_core::revocation::build::<Infallible>(
            &key.verifying_key(),
            serial,
            Timestamp(1),
            vec![Entry {
                subject: Subject::Mak(serial),
                reason: Reason::Withdrawn,
                revoked_at: 1,
            }],
            |m| Ok(key.sign(m).to_bytes()),
        )
        .unwrap_or_else(|e| match e {})
        .expect("fits")
        .to_file_text()
    }

    // X7: an import keeps the newest list; an older one is refused and changes nothing.
    #[test]
    fn x7_imports_never_roll_back() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let key = tally_core::trust::generate_key();
        assert!(import(dir, &list(&key, 1)).is_err(), "no authority.pub yet");
        std::fs::write(
            dir.join(paths::AUTHORITY_PUB),
            tally_core::trust::armor(
                tally_core::trust::labels::AUTHORITY_PUBLIC,
                key.verifying_key().as_bytes(),
            ),
        )
        .expect("write");
        assert!(import(dir, &list(&key, 5)).expect("first").replaced);
        assert!(!import(dir, &list(&key, 5)).expect("same").replaced);
        let err = import(dir, &list(&key, 4)).expect_err("older");
        assert!(err.to_string().contains("older"), "{err}");
        assert_eq!(load(dir).expect("held").serial(), 5);
        let other = tally_core::trust::generate_key();
        let err = import(dir, &list(&other, 9)).expect_err("foreign");
        assert!(err.to_string().contains("another authority"), "{err}");
        assert_eq!(load(dir).expect("held").serial(), 5);
    }

    // X7: imports at once (a fetch beside an admin's import) never leave an older list than
    // the newest one offered: each compares with what the others wrote.
    #[test]
    fn x7_concurrent_imports_keep_the_newest() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let key = tally_core::trust::generate_key();
        std::fs::write(
            dir.join(paths::AUTHORITY_PUB),
            tally_core::trust::armor(
                tally_core::trust::labels::AUTHORITY_PUBLIC,
                key.verifying_key().as_bytes(),
            ),
        )
        .expect("write");
        for round in 0..5u32 {
            let base = round * 16;
            let lists: Vec<String> = (1..=16).map(|i| list(&key, base + i)).collect();
            std::thread::scope(|scope| {
                // Newest first, so without the lock a slow older import would write last.
                for text in lists.iter().rev() {
                    scope.spawn(move || {
                        let _ = import(dir, text);
                    });
                }
            });
            assert_eq!(
                load(dir).expect("held").serial(),
                base + 16,
                "round {round}"
            );
        }
    }
}
