//! The hardware fingerprint (R12): weighted components, compared against the fingerprint of the
//! last successful activation.
//!
//! | component | what it is (read by `tally-client`'s probe on Linux)          | weight |
//! |-----------|---------------------------------------------------------------|-------:|
//! | `disk`    | serials/ids of the physical disks (`/sys/block/*/device`)     | 10     |
//! | `board`   | board and product identity (`/sys/class/dmi/id`)             | 5      |
//! | `nic`     | MAC addresses of physical network interfaces                  | 3      |
//! | `cpu`     | CPU model (`/proc/cpuinfo`)                                   | 3      |
//! | `memory`  | installed memory, rounded to GiB (`/proc/meminfo`)           | 2      |
//!
//! A change is significant when the weights of the components that differ add up to
//! [`TOLERANCE`] or more: a new disk alone needs reactivation; a new CPU plus more memory
//! (3 + 2) does not; board, NIC and CPU together (5 + 3 + 3) do. Unknown components weigh 1.
//! Only SHA-256 digests of the values are kept, never the serials themselves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::trust::{sha256, to_hex};

/// Total weight of changed components that requires reactivation.
pub const TOLERANCE: u32 = 10;

/// The weight of a component (see the module docs).
pub fn weight(component: &str) -> u32 {
    match component {
        "disk" => 10,
        "board" => 5,
        "nic" | "cpu" => 3,
        "memory" => 2,
        _ => 1,
    }
}

/// A hardware fingerprint: component name → digest of its value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hardware(BTreeMap<String, String>);

impl Hardware {
    /// Builds a fingerprint from raw values (hashed here).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.to_owned(),
                        to_hex(&sha256(format!("tally/hw/{k}\0{v}").as_bytes())[..12]),
                    )
                })
                .collect(),
        )
    }

    /// The total weight of the components that differ from `other` (present in one only, or
    /// with different values).
    pub fn changed_weight(&self, other: &Self) -> u32 {
        let mut names: Vec<&String> = self.0.keys().chain(other.0.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter(|n| self.0.get(*n) != other.0.get(*n))
            .map(|n| weight(n))
            .sum()
    }

    /// Whether `other` is within tolerance of this baseline (R12).
    pub fn within_tolerance(&self, other: &Self) -> bool {
        self.changed_weight(other) < TOLERANCE
    }

    /// First 8 bytes of SHA-256 over the fingerprint (component digests in name order): what a
    /// version-2 request carries (X6), so a host can tell copies on other hardware apart.
    pub fn digest(&self) -> [u8; 8] {
        let mut text = String::new();
        for (k, v) in &self.0 {
            text.push_str(k);
            text.push('=');
            text.push_str(v);
            text.push('\n');
        }
        let full = sha256(text.as_bytes());
        let mut out = [0; 8];
        out.copy_from_slice(&full[..8]);
        out
    }

    /// Component names.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hw(disk: &str, board: &str, nic: &str, cpu: &str, mem: &str) -> Hardware {
        Hardware::from_pairs([
            ("disk", disk),
            ("board", board),
            ("nic", nic),
            ("cpu", cpu),
            ("memory", mem),
        ])
    }

    // R12: disks weigh most; small changes stay within tolerance.
    #[test]
    fn r12_weights_decide_tolerance() {
        let base = hw("d1", "b1", "n1", "c1", "16");
        assert!(base.within_tolerance(&base));
        assert!(
            !base.within_tolerance(&hw("d2", "b1", "n1", "c1", "16")),
            "new disk"
        );
        assert!(
            base.within_tolerance(&hw("d1", "b1", "n1", "c2", "32")),
            "cpu + memory = 5"
        );
        assert!(
            base.within_tolerance(&hw("d1", "b2", "n1", "c1", "32")),
            "board + memory = 7"
        );
        assert!(
            !base.within_tolerance(&hw("d1", "b2", "n2", "c2", "16")),
            "board + nic + cpu = 11"
        );
        assert_eq!(
            base.changed_weight(&Hardware::from_pairs([("disk", "d1")])),
            5 + 3 + 3 + 2
        );
    }

    #[test]
    fn values_are_not_stored_in_clear() {
        let h = Hardware::from_pairs([("disk", "SERIAL-XYZ")]);
        assert!(
            !serde_json::to_string(&h)
                .unwrap_or_default()
                .contains("SERIAL")
        );
    }
}
