//! The host data directory's layout: one constant per file, so every command and the running
//! host agree on where things are.

use std::path::PathBuf;

/// The host's Ed25519 secret key (mode 0600).
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
/// The authority public key this host (and clients of a dev host) trust.
pub const AUTHORITY_PUB: &str = "authority.pub";
/// Where a dev host keeps its private authority.
pub const DEV_AUTHORITY_DIR: &str = "dev-authority";
/// Settings changed live (R26); they persist across restarts and win over the config.
pub const SETTINGS_FILE: &str = "settings.json";
/// The admin token (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Where the running host writes its admin URL, for local commands.
pub const ADMIN_ADDR_FILE: &str = "admin.addr";
/// Copy of the admin TLS certificate, for local commands to trust.
pub const ADMIN_CERT_FILE: &str = "admin-cert.pem";
/// The last DNS publishing result (for `host status`).
pub const DNS_STATUS_FILE: &str = "dns-status.json";

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
