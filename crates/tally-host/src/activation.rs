//! Activating the installed host key with the authority, once (R22): online over its HTTP API,
//! or offline by an installation ID read out and a confirmation ID typed back. Either way the
//! authority's certificate is verified under the trusted authority key before it is installed,
//! and event 1003 is recorded (through the writer: no host runs during activation).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tally_authority::service::{self, HARDWARE_ID_BYTES};
use tally_client::authority::AuthorityClient;
use tally_core::KeyGroup;
use tally_core::hex::to_hex;
use tally_core::trust::parse_certificate;
use tracing::warn;

use crate::identity::{
    ensure_host_key, host_secret, install_verified_certificate, installed_host_key,
    record_offline_event,
};
use crate::store::Database;
use crate::{HostError, paths};

/// How long one call to the authority may take.
const AUTHORITY_TIMEOUT: Duration = Duration::from_secs(30);

/// This host's hardware id for the authority: 5 bytes of SHA-256 of its fingerprint (R12, R23).
pub fn hardware_id() -> [u8; HARDWARE_ID_BYTES] {
    let hw = tally_client::hardware::probe();
    let digest = tally_core::trust::sha256(&serde_json::to_vec(&hw).unwrap_or_default());
    let mut id = [0u8; HARDWARE_ID_BYTES];
    id.copy_from_slice(&digest[..HARDWARE_ID_BYTES]);
    id
}

/// The installation ID for offline activation, also written to `DATA_DIR/installation-id.txt`.
#[derive(Clone, Debug)]
pub struct InstallationId {
    /// The digit groups to read out.
    pub groups: Vec<String>,
    /// The file holding them.
    pub file: PathBuf,
}

/// What the host was activated for.
#[derive(Clone, Copy, Debug)]
pub struct Activated {
    /// The certified key group.
    pub group: KeyGroup,
    /// The certified generation.
    pub generation: u8,
    /// X8: the certificate's index in the authority's log, when a verified proof was kept
    /// (`DATA_DIR/certificate.proof`); `None` offline (fetch one with `tally host log-proof`).
    pub log_index: Option<u64>,
}

/// How to reach the authority.
#[derive(Clone, Debug)]
pub enum Method {
    /// Online: the authority's base URL.
    Online(String),
    /// Offline, second step: the confirmation ID's digit groups.
    Confirmation(String),
}

/// Offline, first step: the installation ID for the installed host key and this host.
pub fn installation_id(dir: &Path) -> Result<InstallationId, HostError> {
    let key = installed_host_key(dir)?;
    ensure_host_key(dir)?;
    let public = host_secret(dir)?.verifying_key();
    let groups = service::installation_id(key, &public, &hardware_id());
    let file = dir.join(paths::INSTALLATION_ID);
    let text = format!("{}\n", groups.join(" "));
    tally_store::fsmode::write_atomic(&file, text.as_bytes(), tally_store::fsmode::PUBLIC_FILE)
        .map_err(HostError::write(&file))?;
    Ok(InstallationId { groups, file })
}

/// Activates the installed host key by `method`. `trust` is the text of the authority public
/// key to check the certificate against; `None` uses `DATA_DIR/authority.pub`, and online, when
/// that is missing too, the key the authority sends (with a warning: trust on first use).
pub async fn activate(
    dir: &Path,
    db: &Database,
    method: Method,
    trust: Option<String>,
) -> Result<Activated, HostError> {
    let key = installed_host_key(dir)?;
    ensure_host_key(dir)?;
    let public = host_secret(dir)?.verifying_key();
    let trust = trust.or_else(|| std::fs::read_to_string(dir.join(paths::AUTHORITY_PUB)).ok());
    let (cert, anchor_text, log_proof) = match method {
        Method::Confirmation(confirmation) => {
            let anchor_text = trust.ok_or_else(|| {
                HostError::Invalid(
                    "offline activation needs the authority's public key: pass --trust FILE".into(),
                )
            })?;
            // X8: the confirmation carries no authority id; the certificate is rebuilt for
            // each trusted root, newest first, and the one that verifies is kept.
            let anchor = crate::rollover::anchor(dir, &anchor_text)?;
            let now = tally_core::time::Clock::now(&tally_core::time::SystemClock);
            let mut rebuilt = None;
            for root in anchor.keys_at(now) {
                let cert =
                    service::certificate_from_confirmation(&confirmation, key, &public, &root)
                        .map_err(|e| HostError::Invalid(e.to_string()))?;
                let verifies = anchor.verify_certificate(&cert, now).is_ok();
                if verifies || rebuilt.is_none() {
                    rebuilt = Some(cert);
                }
                if verifies {
                    break;
                }
            }
            let cert = rebuilt.ok_or_else(|| {
                HostError::Invalid("this host trusts no authority root at this time".into())
            })?;
            (cert, anchor_text, None)
        }
        Method::Online(url) => {
            let authority = AuthorityClient::new(&url, AUTHORITY_TIMEOUT)?;
            let anchor_text = match trust {
                Some(t) => t,
                None => {
                    let info = authority.info().await?;
                    warn!(
                        authority_id = %info.authority_id,
                        "no --trust given: trusting the key the authority sent; check its id with your vendor"
                    );
                    info.public_key_file
                }
            };
            let grant = authority
                .activate_host(
                    &key.to_string(),
                    &to_hex(public.as_bytes()),
                    &to_hex(&hardware_id()),
                )
                .await?;
            let cert = parse_certificate(&grant.certificate).map_err(|e| {
                HostError::Invalid(format!("the authority sent a damaged certificate: {e}"))
            })?;
            (cert, anchor_text, grant.log_proof)
        }
    };
    let verified = install_verified_certificate(dir, &cert, &anchor_text)?;
    // X8: the proof of the certificate in the authority's log, checked and kept. The
    // certificate is valid without it, so a missing or bad proof is a warning, and status says
    // how to fetch one.
    crate::log_proof::forget(dir);
    let proven = match log_proof {
        Some(text) => match crate::log_proof::install(dir, &text) {
            Ok(p) => Some(p.index),
            Err(error) => {
                warn!(%error, "the authority's log proof for this certificate does not verify; not kept");
                None
            }
        },
        None => None,
    };
    let coverage = verified.coverage();
    let data = serde_json::json!({
        "key": key.partial(),
        "group": coverage.group.name(),
        "generation": coverage.generation,
        "log_index": proven,
    });
    record_offline_event(dir, db, "host activated with the authority", data).await?;
    Ok(Activated {
        group: coverage.group,
        generation: coverage.generation,
        log_index: proven,
    })
}
