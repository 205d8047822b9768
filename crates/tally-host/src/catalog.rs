//! Which catalog a host serves, for every command (one function), and the watch that loads a
//! newer one into a running host (R24).
//!
//! Precedence ([`resolve`]), the same for `tally host run` and every offline command:
//! 1. the signed catalog imported into the data directory (`DATA_DIR/catalog.toml`, verified
//!    against `DATA_DIR/authority.pub`): R24 says a newer catalog loaded into a host serves
//!    newer editions, and [`import`] only accepts one newer than what is in force;
//! 2. else the configured catalog (`--catalog`, `TALLY_CATALOG`, or the config file's
//!    `catalog`);
//! 3. else the built-in demo catalog.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tally_core::Catalog;
use tally_core::trust::parse_authority_public;
use tally_server::HostService;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::HostError;
use crate::{events, paths};

/// How often the running host looks at the imported catalog file.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Loads a catalog file (plain TOML), or the demo catalog when `path` is `None`.
pub fn load_file(path: Option<&Path>) -> Result<Catalog, HostError> {
    match path {
        None => Ok(Catalog::demo()),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(HostError::read(p))?;
            Catalog::parse(&text).map_err(|source| HostError::Catalog {
                what: format!("catalog {}", p.display()),
                source,
            })
        }
    }
}

/// The signed catalog imported into `dir`, verified against `dir/authority.pub`, if any.
pub fn imported(dir: &Path) -> Result<Option<Catalog>, HostError> {
    let path = dir.join(paths::HOST_CATALOG);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let anchor_path = dir.join(paths::AUTHORITY_PUB);
    let anchor_text = std::fs::read_to_string(&anchor_path).map_err(|_| {
        HostError::Invalid(format!(
            "{} needs {} to verify it",
            path.display(),
            paths::AUTHORITY_PUB
        ))
    })?;
    parse_authority_public(&anchor_text).map_err(HostError::format(anchor_path))?;
    verify_signed(dir, &anchor_text, &text)
        .map(Some)
        .map_err(|source| HostError::Catalog {
            what: path.display().to_string(),
            source,
        })
}

/// Verifies a signed catalog under the host's root or a root it handed trust to (X8), newest
/// first.
fn verify_signed(
    dir: &Path,
    anchor_text: &str,
    text: &str,
) -> Result<Catalog, tally_core::catalog::CatalogError> {
    let keys = crate::rollover::anchor(dir, anchor_text)
        .map(|a| a.keys_at(tally_core::time::Clock::now(&tally_core::time::SystemClock)))
        .unwrap_or_default();
    let mut last = None;
    for key in &keys {
        match tally_core::catalog::signed::verify(text, key) {
            Ok(catalog) => return Ok(catalog),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        tally_core::catalog::CatalogError::Invalid("no trusted authority key".into())
    }))
}

/// The catalog in force for the host in `dir` configured with `configured` (see the module
/// docs for the precedence).
pub fn resolve(dir: &Path, configured: Option<&Path>) -> Result<Catalog, HostError> {
    match imported(dir)? {
        Some(catalog) => Ok(catalog),
        None => load_file(configured),
    }
}

/// Imports the signed catalog `text` into `dir` (R24). It must verify under the host's
/// authority key and be newer than the catalog in force ([`resolve`] with `configured`), so an
/// import can never downgrade. The file is replaced atomically; a running host loads it within
/// seconds.
pub fn import(dir: &Path, configured: Option<&Path>, text: &str) -> Result<Catalog, HostError> {
    let anchor_text = std::fs::read_to_string(dir.join(paths::AUTHORITY_PUB)).map_err(|_| {
        HostError::Invalid(
            "this host has no authority key (DATA_DIR/authority.pub): activate it first".into(),
        )
    })?;
    parse_authority_public(&anchor_text)
        .map_err(HostError::format(dir.join(paths::AUTHORITY_PUB)))?;
    let catalog = verify_signed(dir, &anchor_text, text).map_err(|source| HostError::Catalog {
        what: "the catalog is refused".into(),
        source,
    })?;
    let current = resolve(dir, configured)?;
    if catalog.version() <= current.version() {
        return Err(HostError::Invalid(format!(
            "catalog version {} is not newer than the one in force (version {})",
            catalog.version(),
            current.version()
        )));
    }
    let target = dir.join(paths::HOST_CATALOG);
    tally_store::fsmode::write_atomic(&target, text.as_bytes(), tally_store::fsmode::PUBLIC_FILE)
        .map_err(HostError::write(&target))?;
    Ok(catalog)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Watches the imported catalog file in `dir` and swaps it into the running host when it
/// changes (R24). A catalog that does not verify is refused and the previous one stays.
pub async fn watch(dir: PathBuf, service: Arc<HostService>, shutdown: CancellationToken) {
    let path = dir.join(paths::HOST_CATALOG);
    let mut seen = modified(&path);
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
        match imported(&dir) {
            Ok(Some(catalog)) => {
                info!(
                    version = catalog.version(),
                    editions = catalog.editions().len(),
                    "catalog loaded (R24)"
                );
                let data = serde_json::json!({
                    "version": catalog.version(),
                    "editions": catalog.editions().len(),
                });
                events::record(
                    service.store(),
                    events::CATALOG_LOADED,
                    "info",
                    "catalog loaded",
                    data,
                )
                .await;
                service.set_catalog(Arc::new(catalog));
            }
            Ok(None) => {}
            Err(error) => {
                warn!(
                    error = %crate::error::chain(&error),
                    "new catalog refused; still serving the previous one"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_catalog(dir: &Path, version: u32) -> PathBuf {
        let path = dir.join(format!("catalog-v{version}.toml"));
        let text = tally_core::catalog::DEMO_CATALOG
            .replace("version = 1", &format!("version = {version}"));
        std::fs::write(&path, text).expect("write");
        path
    }

    fn trust(dir: &Path) -> ed25519_dalek::SigningKey {
        let key = tally_core::trust::generate_key();
        let text = tally_core::trust::armor(
            tally_core::trust::labels::AUTHORITY_PUBLIC,
            key.verifying_key().as_bytes(),
        );
        std::fs::write(dir.join(paths::AUTHORITY_PUB), text).expect("write");
        key
    }

    #[test]
    fn configured_catalog_is_in_force_until_a_newer_one_is_imported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        assert_eq!(resolve(dir, None).expect("demo").version(), 1);
        let v3 = write_catalog(dir, 3);
        assert_eq!(resolve(dir, Some(&v3)).expect("configured").version(), 3);

        let key = trust(dir);
        let signed = |v: u32| {
            let text =
                tally_core::catalog::DEMO_CATALOG.replace("version = 1", &format!("version = {v}"));
            tally_core::catalog::signed::sign(&text, &key).expect("sign")
        };
        // R24: no downgrade relative to the configured catalog.
        let err = import(dir, Some(&v3), &signed(2)).expect_err("downgrade");
        assert!(err.to_string().contains("not newer"), "{err}");
        assert!(imported(dir).expect("none").is_none());
        assert_eq!(
            import(dir, Some(&v3), &signed(4)).expect("newer").version(),
            4
        );
        assert_eq!(resolve(dir, Some(&v3)).expect("imported").version(), 4);
    }
}
