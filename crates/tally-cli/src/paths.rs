//! Default locations and the host data directory layout.

use std::path::PathBuf;

/// Host data directory files.
pub const HOST_SECRET: &str = "host.key";
/// The host's public key, to send to the authority.
pub const HOST_PUBLIC: &str = "host.pub";
/// The host certificate issued by the authority.
pub const HOST_CERT: &str = "host.cert";
/// The host key installed on this host (R22).
pub const HOST_PRODUCT_KEY: &str = "host-product.key";
/// The last installation ID shown for offline activation.
pub const INSTALLATION_ID: &str = "installation-id.txt";
/// The signed catalog imported into the host (R24).
pub const HOST_CATALOG: &str = "catalog.toml";
/// The host database.
pub const HOST_DB: &str = "tally.db";
/// The authority public key clients of a dev host trust.
pub const AUTHORITY_PUB: &str = "authority.pub";
/// Where a dev host keeps its private authority.
pub const DEV_AUTHORITY_DIR: &str = "dev-authority";

fn data_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share"),
        None => PathBuf::from("."),
    }
}

/// Default host data directory: `$XDG_DATA_HOME/tally/host` (usually `~/.local/share/tally/host`).
pub fn default_host_dir() -> PathBuf {
    data_home().join("tally/host")
}

/// Default client state directory: `$XDG_DATA_HOME/tally/client`.
pub fn default_client_dir() -> PathBuf {
    data_home().join("tally/client")
}
