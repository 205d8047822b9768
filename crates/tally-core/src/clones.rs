//! One CMID, one installation (X6), sans-I/O: how a host judges a version-2 request's
//! installation sequence against what its registry holds for the CMID.
//!
//! A client saves its sequence number before it sends a request carrying it, so one
//! installation's numbers only grow. Copies of one installation (a disk image deployed without
//! generalize, a cloned VM) continue from the same saved number: the host sees a number that is
//! not above the highest it stored. The one exception is a lower number that comes within
//! [`REORDER_WINDOW_MS`] of the stored one from the same hardware digest: one installation's
//! two attempts (the agent's and a manual one) arriving out of order.

use serde::{Deserialize, Serialize};
use tally_proto::RequestExt;

use crate::time::Timestamp;

/// How long after the stored request a lower number from the same hardware is taken for one
/// installation's attempts arriving out of order rather than a clone.
pub const REORDER_WINDOW_MS: i64 = 120_000;

/// What a host's registry holds about the installation behind a CMID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The highest sequence stored (none: only version-1 requests so far).
    pub sequence: Option<u32>,
    /// The hardware digest that came with it.
    pub hardware_digest: Option<[u8; 8]>,
    /// When the CMID was last seen.
    pub last_seen: Timestamp,
}

/// The host's judgement of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to compare with (a new CMID, or version-1 requests so far): store the number.
    First,
    /// The number is above the stored one: the same installation, store the number.
    Next,
    /// A lower number from the same hardware shortly after: one installation's attempts out of
    /// order; the stored number stays.
    Reordered,
    /// Another installation presents this CMID.
    Clone {
        /// The number the registry held.
        stored: u32,
    },
}

impl Verdict {
    /// Whether this is a clone.
    pub fn is_clone(self) -> bool {
        matches!(self, Self::Clone { .. })
    }

    /// Whether the request's number is to be stored.
    pub fn stores(self) -> bool {
        matches!(self, Self::First | Self::Next)
    }
}

/// What a host does with a detected clone (host setting `clones`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClonePolicy {
    /// Count the copies as separate machines (the default: the count is a compliance
    /// signal): the copy gets a signed `clone_detected`, nothing counted, and takes a new CMID.
    #[default]
    Apart,
    /// Count the copies once (as version 1 did), and only report them.
    Once,
}

/// Judges `request` at `at` against what the registry holds (`seen`).
pub fn judge(seen: Option<&Seen>, request: &RequestExt, at: Timestamp) -> Verdict {
    let Some(seen) = seen else {
        return Verdict::First;
    };
    let Some(stored) = seen.sequence else {
        return Verdict::First;
    };
    if request.sequence > stored {
        return Verdict::Next;
    }
    let same_hardware = seen.hardware_digest == Some(request.hardware_digest);
    let recent = at.0.saturating_sub(seen.last_seen.0) <= REORDER_WINDOW_MS;
    if request.sequence < stored && same_hardware && recent {
        Verdict::Reordered
    } else {
        Verdict::Clone { stored }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timestamp = Timestamp(1_800_000_000_000);

    fn ext(sequence: u32, hw: u8) -> RequestExt {
        RequestExt {
            sequence,
            hardware_digest: [hw; 8],
        }
    }

    fn seen(sequence: u32, hw: u8) -> Seen {
        Seen {
            sequence: Some(sequence),
            hardware_digest: Some([hw; 8]),
            last_seen: T,
        }
    }

    // X6: one installation's numbers grow; a copy repeats a number it continued from.
    #[test]
    fn x6_a_repeated_number_is_a_clone_and_a_growing_one_is_not() {
        assert_eq!(judge(None, &ext(1, 1), T), Verdict::First);
        assert_eq!(judge(Some(&seen(5, 1)), &ext(6, 1), T), Verdict::Next);
        assert_eq!(
            judge(Some(&seen(5, 1)), &ext(5, 1), T),
            Verdict::Clone { stored: 5 },
            "the same number twice: two installations (identical hardware)"
        );
        assert_eq!(
            judge(Some(&seen(9, 1)), &ext(6, 2), T),
            Verdict::Clone { stored: 9 },
            "lower, from other hardware"
        );
        let v1 = Seen {
            sequence: None,
            hardware_digest: None,
            last_seen: T,
        };
        assert_eq!(judge(Some(&v1), &ext(1, 1), T), Verdict::First);
    }

    // X6: one installation's two attempts out of order are not a clone; the same lower number
    // days later is.
    #[test]
    fn x6_out_of_order_attempts_within_the_window_are_not_a_clone() {
        assert_eq!(
            judge(Some(&seen(9, 1)), &ext(8, 1), Timestamp(T.0 + 1000)),
            Verdict::Reordered
        );
        assert!(
            judge(
                Some(&seen(9, 1)),
                &ext(8, 1),
                Timestamp(T.0 + REORDER_WINDOW_MS + 1)
            )
            .is_clone()
        );
        assert!(!Verdict::Reordered.stores() && Verdict::Next.stores());
    }
}
