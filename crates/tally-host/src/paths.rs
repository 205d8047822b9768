//! The host data directory's layout: one constant per file, so every command and the running
//! host agree on where things are.

use std::path::{Path, PathBuf};

use tally_store::fsmode;

use crate::HostError;

/// The host's Ed25519 secret key (mode 0600).
pub const HOST_SECRET: &str = "host.key";
/// The host's public key, to send to the authority.
pub const HOST_PUBLIC: &str = "host.pub";
/// The host certificate issued by the authority.
pub const HOST_CERT: &str = "host.cert";
/// X8: the inclusion proof of the host certificate in the authority's transparency log.
pub const CERTIFICATE_PROOF: &str = "certificate.proof";
/// The host key installed on this host (R22).
pub const HOST_PRODUCT_KEY: &str = "host-product.key";
/// The last installation ID shown for offline activation.
pub const INSTALLATION_ID: &str = "installation-id.txt";
/// The signed catalog imported into the host (R24).
pub const HOST_CATALOG: &str = "catalog.toml";
/// The newest revocation list the host holds (X7), verified against `authority.pub`.
pub const REVOCATIONS: &str = "revocations.tally";
/// The host database.
pub const HOST_DB: &str = "tally.db";
/// The authority public key this host (and clients of a dev host) trust.
pub const AUTHORITY_PUB: &str = "authority.pub";
/// Where a dev host keeps its private authority.
pub const DEV_AUTHORITY_DIR: &str = "dev-authority";
/// Settings changed live (R26); they persist across restarts and win over the config.
pub const SETTINGS_FILE: &str = "settings.json";
/// The admin token (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = tally_admin::remote::TOKEN_FILE;
/// Where the running host writes its admin URL, for local commands.
pub const ADMIN_ADDR_FILE: &str = tally_admin::remote::ADDR_FILE;
/// Copy of the admin TLS certificate, for local commands to trust.
pub const ADMIN_CERT_FILE: &str = tally_admin::remote::CERT_FILE;
/// The last DNS publishing result (for `host status`).
pub const DNS_STATUS_FILE: &str = "dns-status.json";

/// X4: the most open mode each of the data directory's entries may have; [`tighten`] narrows
/// what is more open. The directory and the dev authority's are the owner's alone; secrets, the
/// database and what describes the running host are 0600; public keys and certificates 0644.
const MAX_MODES: &[(&str, u32)] = &[
    ("", fsmode::PRIVATE_DIR),
    (HOST_SECRET, fsmode::PRIVATE_FILE),
    (HOST_PRODUCT_KEY, fsmode::PRIVATE_FILE),
    (ADMIN_TOKEN_FILE, fsmode::PRIVATE_FILE),
    (ADMIN_ADDR_FILE, fsmode::PRIVATE_FILE),
    (SETTINGS_FILE, fsmode::PRIVATE_FILE),
    (DNS_STATUS_FILE, fsmode::PRIVATE_FILE),
    (crate::lock::LOCK_FILE, fsmode::PRIVATE_FILE),
    (crate::revocations::IMPORT_LOCK, fsmode::PRIVATE_FILE),
    (HOST_DB, fsmode::PRIVATE_FILE),
    ("tally.db-wal", fsmode::PRIVATE_FILE),
    ("tally.db-shm", fsmode::PRIVATE_FILE),
    (HOST_PUBLIC, fsmode::PUBLIC_FILE),
    (HOST_CERT, fsmode::PUBLIC_FILE),
    (CERTIFICATE_PROOF, fsmode::PUBLIC_FILE),
    (AUTHORITY_PUB, fsmode::PUBLIC_FILE),
    (HOST_CATALOG, fsmode::PUBLIC_FILE),
    (REVOCATIONS, fsmode::PUBLIC_FILE),
    (INSTALLATION_ID, fsmode::PUBLIC_FILE),
    (ADMIN_CERT_FILE, fsmode::PUBLIC_FILE),
];

/// X4: narrows every entry of the data directory `dir` that is more open than [`MAX_MODES`]
/// allows (an older Tally left `host-product.key` 0644; a umask of 000 made the directory
/// 0777), each change logged as a warning with the path and both modes; then the dev
/// authority's directory (see `tally_authority::dir::tighten`).
pub fn tighten(dir: &Path) -> Result<(), HostError> {
    for (name, max) in MAX_MODES {
        let path = if name.is_empty() {
            dir.to_owned()
        } else {
            dir.join(name)
        };
        fsmode::tighten(&path, *max).map_err(HostError::write(&path))?;
    }
    let dev = dir.join(DEV_AUTHORITY_DIR);
    if dev.is_dir() {
        tally_authority::dir::tighten(&dev).map_err(HostError::write(&dev))?;
    }
    Ok(())
}

/// `$XDG_DATA_HOME`, else `~/.local/share`, else the current directory: where Tally keeps the
/// host's and the client's data by default.
pub fn data_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share"),
        None => PathBuf::from("."),
    }
}

/// Default host data directory: `$XDG_DATA_HOME/tally/host` (usually `~/.local/share/tally/host`).
pub fn default_data_dir() -> PathBuf {
    data_home().join("tally/host")
}
