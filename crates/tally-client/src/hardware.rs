//! This machine's hardware fingerprint (R12), read by the platform's probe
//! ([`crate::platform::hardware_components`]).
//!
//! Tests and unusual machines can inject the fingerprint: when the environment variable
//! `TALLY_HARDWARE_FILE` names a JSON file of `{"component": "value", ...}`, that file is used
//! instead of the probe. Weights and tolerance are in `tally_core::hardware`.

use std::fs;

use tally_core::hardware::Hardware;

/// Environment variable naming a JSON file that replaces the probe.
pub const OVERRIDE_ENV: &str = "TALLY_HARDWARE_FILE";

/// This machine's fingerprint, or the injected one.
pub fn probe() -> Hardware {
    if let Some(path) = std::env::var_os(OVERRIDE_ENV) {
        match fs::read(&path)
            .map(|b| serde_json::from_slice::<std::collections::BTreeMap<String, String>>(&b))
        {
            Ok(Ok(map)) => {
                return Hardware::from_pairs(map.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            }
            _ => tracing_free_warn(&path),
        }
    }
    let found = crate::platform::hardware_components();
    Hardware::from_pairs(found.iter().map(|(k, v)| (*k, v.as_str())))
}

/// This machine's hardware id for the authority: 5 bytes of SHA-256 of the fingerprint.
pub fn id() -> [u8; 5] {
    let digest = tally_core::trust::sha256(&serde_json::to_vec(&probe()).unwrap_or_default());
    let mut id = [0u8; 5];
    id.copy_from_slice(&digest[..5]);
    id
}

fn tracing_free_warn(path: &std::ffi::OsStr) {
    eprintln!(
        "warning: {OVERRIDE_ENV}={} is not a readable JSON object; probing the hardware instead",
        path.to_string_lossy()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_is_stable_on_this_machine() {
        assert_eq!(probe(), probe());
    }
}
