//! The host's identity: its key pair, its certificate from the authority, the host key it was
//! sold (R22), and dev mode's self-made authority.

use std::path::Path;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use tally_authority::dir as authority_dir;
use tally_core::Catalog;
use tally_core::keys::{HostKeyFields, KeyGroup, KeyKind, ProductKey};
use tally_core::time::{Clock, SystemClock, Timestamp};
use tally_core::trust::{
    HostIdentity, VerifiedHost, armor, generate_key, labels, parse_authority_public,
    parse_certificate, parse_secret,
};
use tally_proto::HostCertificate;
use tally_store::Store;
use tally_store::fsmode;
use tally_store::sqlite::Durability;
use tracing::info;

use crate::store::Database;
use crate::{HostError, events, paths, store};

fn read(path: &Path) -> Result<String, HostError> {
    std::fs::read_to_string(path).map_err(HostError::read(path))
}

/// Writes (or replaces) a public file: keys, certificates, the trust anchor (0644, X4: never
/// from the umask).
fn write(path: &Path, text: &str) -> Result<(), HostError> {
    fsmode::write_atomic(path, text.as_bytes(), fsmode::PUBLIC_FILE).map_err(HostError::write(path))
}

/// Writes (or replaces) a secret file readable by its owner only; an existing file's mode is
/// tightened too (an older Tally wrote `host-product.key` world-readable).
fn write_secret(path: &Path, text: &str) -> Result<(), HostError> {
    fsmode::write_atomic(path, text.as_bytes(), fsmode::PRIVATE_FILE)
        .map_err(HostError::write(path))
}

/// Creates the host key pair in `dir` unless it exists. Returns whether it was created.
pub fn ensure_host_key(dir: &Path) -> Result<bool, HostError> {
    let secret = dir.join(paths::HOST_SECRET);
    if secret.exists() {
        return Ok(false);
    }
    fsmode::create_dir(dir, fsmode::PRIVATE_DIR).map_err(HostError::write(dir))?;
    let key = generate_key();
    authority_dir::write_private(&secret, &armor(labels::HOST_SECRET, &key.to_bytes()))
        .map_err(HostError::write(&secret))?;
    write(
        &dir.join(paths::HOST_PUBLIC),
        &armor(labels::HOST_PUBLIC, key.verifying_key().as_bytes()),
    )?;
    Ok(true)
}

/// The host's secret key in `dir`.
pub fn host_secret(dir: &Path) -> Result<SigningKey, HostError> {
    let path = dir.join(paths::HOST_SECRET);
    parse_secret(labels::HOST_SECRET, &read(&path)?).map_err(HostError::format(path))
}

/// Dev mode: a local authority, a top-group host key for the catalog's newest generation, a
/// certificate, and `authority.pub` for clients. Does nothing if a certificate exists.
pub fn dev_bootstrap(dir: &Path, catalog: &Catalog, now: Timestamp) -> Result<(), HostError> {
    ensure_host_key(dir)?;
    if dir.join(paths::HOST_CERT).exists() {
        return Ok(());
    }
    let auth_dir = dir.join(paths::DEV_AUTHORITY_DIR);
    let authority = match authority_dir::load(&auth_dir) {
        Ok(a) => a,
        Err(tally_authority::AuthorityError::Missing(_)) => authority_dir::init(&auth_dir)?.0,
        Err(e) => return Err(e.into()),
    };
    let host_key = authority.issue_host_key(KeyGroup::ServerC, catalog.newest_generation())?;
    let cert = authority.certify(host_key, &host_secret(dir)?.verifying_key(), now)?;
    write(
        &dir.join(paths::AUTHORITY_PUB),
        &authority_dir::public_file_text(&authority),
    )?;
    write(
        &dir.join(paths::HOST_CERT),
        &armor(labels::HOST_CERTIFICATE, &cert.to_bytes()),
    )?;
    info!(
        data_dir = %dir.display(),
        host_key = %host_key.partial(),
        "dev mode: created a local authority and certified this host for server-c"
    );
    Ok(())
}

/// Loads the host's key and certificate from `dir`.
pub fn load_identity(dir: &Path) -> Result<HostIdentity, HostError> {
    let secret_path = dir.join(paths::HOST_SECRET);
    let cert_path = dir.join(paths::HOST_CERT);
    if !secret_path.exists() || !cert_path.exists() {
        return Err(HostError::NoIdentity(dir.to_owned()));
    }
    let secret = host_secret(dir)?;
    let cert = parse_certificate(&read(&cert_path)?).map_err(HostError::format(&cert_path))?;
    HostIdentity::new(secret, cert)
        .map_err(|e| HostError::Certificate(format!("{}: {e}", cert_path.display())))
}

/// `tally host install-cert`: installs the certificate text `cert_text` the authority issued
/// for this host's key. With `trust` (an authority public key file's text) the certificate must
/// verify under it, and the key is kept as `DATA_DIR/authority.pub`.
pub fn install_certificate_text(
    dir: &Path,
    cert_text: &str,
    trust: Option<&str>,
) -> Result<(), HostError> {
    let cert = parse_certificate(cert_text)
        .map_err(|e| HostError::Invalid(format!("that is not a host certificate: {e}")))?;
    let secret_path = dir.join(paths::HOST_SECRET);
    let secret_text = std::fs::read_to_string(&secret_path).map_err(|_| {
        HostError::Invalid(format!(
            "no host key in {}: run `tally host init` first",
            dir.display()
        ))
    })?;
    let secret =
        parse_secret(labels::HOST_SECRET, &secret_text).map_err(HostError::format(secret_path))?;
    HostIdentity::new(secret, cert.clone())
        .map_err(|_| HostError::Certificate("this certificate is not for this host".into()))?;
    if let Some(anchor_text) = trust {
        parse_authority_public(anchor_text)
            .map_err(|e| HostError::Invalid(format!("that is not an authority key: {e}")))?;
        // X8: under the root or a root it handed trust to.
        let anchor = crate::rollover::anchor(dir, anchor_text)?;
        anchor
            .verify_certificate(&cert, SystemClock.now())
            .map_err(|e| {
                HostError::Certificate(format!(
                    "the certificate does not verify under that authority key: {e}"
                ))
            })?;
        write(&dir.join(paths::AUTHORITY_PUB), anchor_text)?;
    }
    write(&dir.join(paths::HOST_CERT), cert_text)
}

/// Installs a certificate from the authority after checking it against the trusted authority
/// key (`anchor_text`, kept as `DATA_DIR/authority.pub`) and this host's key.
pub fn install_verified_certificate(
    dir: &Path,
    cert: &HostCertificate,
    anchor_text: &str,
) -> Result<VerifiedHost, HostError> {
    // X8: under the root or a root it handed trust to (DATA_DIR/authority.rollover).
    let anchor = crate::rollover::anchor(dir, anchor_text)?;
    let verified = anchor
        .verify_certificate(cert, SystemClock.now())
        .map_err(|e| {
            HostError::Certificate(format!(
                "the certificate does not verify under the authority key: {e}"
            ))
        })?;
    HostIdentity::new(host_secret(dir)?, cert.clone())
        .map_err(|_| HostError::Certificate("this certificate is not for this host".into()))?;
    write(&dir.join(paths::AUTHORITY_PUB), anchor_text)?;
    write(
        &dir.join(paths::HOST_CERT),
        &armor(labels::HOST_CERTIFICATE, &cert.to_bytes()),
    )?;
    Ok(verified)
}

/// The host key installed in `dir` (R22).
pub fn installed_host_key(dir: &Path) -> Result<ProductKey, HostError> {
    let text = std::fs::read_to_string(dir.join(paths::HOST_PRODUCT_KEY)).map_err(|_| {
        HostError::Invalid(format!(
            "no host key installed in {}: run `tally host install-key KEY` first",
            dir.display()
        ))
    })?;
    Ok(text.trim().parse()?)
}

/// `tally host install-key`: stores the host key (R22) after checking it is one (setup keys and
/// MAKs belong on clients), makes the host's key pair if needed, and records event 1003.
///
/// No host needs to run: the event goes through [`store::open_writer`].
pub async fn install_host_key(
    dir: &Path,
    db: &Database,
    key: &str,
) -> Result<HostKeyFields, HostError> {
    let key: ProductKey = key.trim().parse()?;
    match key.kind() {
        KeyKind::Host => {}
        KeyKind::Setup => {
            return Err(HostError::Invalid(
                "this is an edition's setup key: it belongs on clients (`tally client install-key`), \
                 not on a host"
                    .into(),
            ));
        }
        KeyKind::Mak => {
            return Err(HostError::Invalid(
                "this is a MAK: it activates clients directly with the vendor (`tally client \
                 install-key`); a host needs a host key"
                    .into(),
            ));
        }
    }
    let fields = key.host_fields()?;
    ensure_host_key(dir)?;
    // The host key is secret: readable by the host's user only (X4).
    let key_path = dir.join(paths::HOST_PRODUCT_KEY);
    write_secret(&key_path, &format!("{key}\n"))?;
    let data = serde_json::json!({
        "key": key.partial(),
        "group": fields.group.name(),
        "generation": fields.generation,
    });
    record_offline_event(dir, db, "host key installed", data).await?;
    Ok(fields)
}

/// Records event 1003 while no host runs (host key installed, host activated).
pub(crate) async fn record_offline_event(
    dir: &Path,
    db: &Database,
    message: &str,
    data: serde_json::Value,
) -> Result<(), HostError> {
    let store: Arc<dyn Store> = store::open_writer(
        dir,
        db,
        Durability::Full,
        &store::machine_name(),
        tally_store::StoreOptions::default(),
    )
    .await?;
    events::record(&store, events::KEY, "info", message, data).await;
    Ok(())
}
