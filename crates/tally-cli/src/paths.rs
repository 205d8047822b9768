//! Default locations the binary uses beside the host's (which `tally_host::paths` owns).

use std::path::PathBuf;

/// Default client state directory: `$XDG_DATA_HOME/tally/client`.
pub fn default_client_dir() -> PathBuf {
    tally_host::paths::data_home().join("tally/client")
}
