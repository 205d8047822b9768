//! Reads this machine's hardware fingerprint (R12) from Linux sysfs/procfs.
//!
//! Tests and unusual machines can inject the fingerprint: when the environment variable
//! `TALLY_HARDWARE_FILE` names a JSON file of `{"component": "value", ...}`, that file is used
//! instead of the probe. Weights and tolerance are in `tally_core::hardware`.

use std::fs;
use std::path::Path;

use tally_core::hardware::Hardware;

/// Environment variable naming a JSON file that replaces the probe.
pub const OVERRIDE_ENV: &str = "TALLY_HARDWARE_FILE";

fn read_trim(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn disks() -> Option<String> {
    let mut ids: Vec<String> = fs::read_dir("/sys/block")
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("device").exists()) // physical devices only, not loop/dm
        .filter_map(|e| {
            let dev = e.path().join("device");
            read_trim(&dev.join("serial"))
                .or_else(|| read_trim(&dev.join("wwid")))
                .or_else(|| {
                    read_trim(&dev.join("model"))
                        .map(|m| format!("{m}:{}", e.file_name().to_string_lossy()))
                })
        })
        .collect();
    ids.sort();
    (!ids.is_empty()).then(|| ids.join(","))
}

fn board() -> Option<String> {
    let dmi = Path::new("/sys/class/dmi/id");
    let parts: Vec<String> = [
        "board_vendor",
        "board_name",
        "product_name",
        "product_serial",
        "board_serial",
    ]
    .iter()
    .filter_map(|f| read_trim(&dmi.join(f)))
    .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn nics() -> Option<String> {
    let mut macs: Vec<String> = fs::read_dir("/sys/class/net")
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().join("device").exists()) // physical interfaces only
        .filter_map(|e| read_trim(&e.path().join("address")))
        .collect();
    macs.sort();
    (!macs.is_empty()).then(|| macs.join(","))
}

fn cpu() -> Option<String> {
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
}

fn memory_gib() -> Option<String> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(((kb + (1 << 19)) >> 20).to_string())
}

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
    let found: Vec<(&str, String)> = [
        ("disk", disks()),
        ("board", board()),
        ("nic", nics()),
        ("cpu", cpu()),
        ("memory", memory_gib()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
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
