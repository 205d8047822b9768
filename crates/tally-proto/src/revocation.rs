//! The authority's revocation list (X7): its binary encoding. Verification against the root
//! a client trusts is in `tally_core::revocation`.
//!
//! ```text
//! format (u8 = 1) | authority_id [8] | serial (u32) | issued_at (i64, Unix ms) | count (u32)
//! count × entry:  tag (u8) | subject | reason (u8) | revoked_at (i64, Unix ms)
//!                 tag 1: certificate fingerprint [32]; tag 2: host key serial (u32);
//!                 tag 3: MAK serial (u32)
//! signature [64]  Ed25519 by the authority root over
//!                 "tally/v1/revocation-list\0" || every byte before the signature
//! ```

use crate::codec::{DecodeError, Reader};

/// Largest encoded list (about 24,000 certificate entries): a client never reads more.
pub const MAX_LIST_BYTES: usize = 1 << 20;

/// The list format this crate writes and reads.
pub const FORMAT: u8 = 1;

/// What is revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// One host certificate, by its fingerprint (SHA-256 of its encoding).
    Certificate([u8; 32]),
    /// Every certificate issued for the host key with this serial.
    HostKey(u32),
    /// A MAK: no new activation, and its existing activations end (R25).
    Mak(u32),
}

/// Why (a stable number; names in [`Reason::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reason {
    /// No reason given.
    Unspecified = 0,
    /// The key or a host's data directory leaked.
    KeyCompromise = 1,
    /// A reactivation replaced this certificate (R23: a key never has more live hosts than
    /// its limit).
    Superseded = 2,
    /// The customer stopped using it.
    CessationOfOperation = 3,
    /// The vendor withdrew it (contract ended, refund, abuse).
    Withdrawn = 4,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 5] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::Superseded,
        Self::CessationOfOperation,
        Self::Withdrawn,
    ];

    /// A stable snake_case name (CLI `--reason`, JSON, messages).
    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "key_compromise",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessation_of_operation",
            Self::Withdrawn => "withdrawn",
        }
    }

    /// The reason named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Self::ALL
            .into_iter()
            .find(|r| *r as u8 == v)
            .ok_or(DecodeError::InvalidField {
                field: "reason",
                reason: "unknown reason",
            })
    }
}

/// One revocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What.
    pub subject: Subject,
    /// Why.
    pub reason: Reason,
    /// When, Unix milliseconds.
    pub revoked_at: i64,
}

/// A revocation list and the authority's signature over it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevocationList {
    /// First 8 bytes of SHA-256 of the signing authority's public key.
    pub authority_id: [u8; 8],
    /// Grows with every change; a client never goes back to a lower one.
    pub serial: u32,
    /// When the authority signed it, Unix milliseconds.
    pub issued_at: i64,
    /// Every revocation, oldest first.
    pub entries: Vec<Entry>,
    /// Ed25519 signature over [`RevocationList::signed_bytes`].
    pub signature: [u8; 64],
}

impl RevocationList {
    /// Domain separator of the signature.
    pub const SIGNING_CONTEXT: &'static [u8] = b"tally/v1/revocation-list\0";

    /// The bytes the authority signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(Self::SIGNING_CONTEXT.len() + 25 + 42 * self.entries.len());
        out.extend_from_slice(Self::SIGNING_CONTEXT);
        self.encode_unsigned(&mut out);
        out
    }

    fn encode_unsigned(&self, out: &mut Vec<u8>) {
        out.push(FORMAT);
        out.extend_from_slice(&self.authority_id);
        out.extend_from_slice(&self.serial.to_be_bytes());
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        // Bounded by MAX_LIST_BYTES when built (`tally_core::revocation`).
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            match e.subject {
                Subject::Certificate(fp) => {
                    out.push(1);
                    out.extend_from_slice(&fp);
                }
                Subject::HostKey(serial) => {
                    out.push(2);
                    out.extend_from_slice(&serial.to_be_bytes());
                }
                Subject::Mak(serial) => {
                    out.push(3);
                    out.extend_from_slice(&serial.to_be_bytes());
                }
            }
            out.push(e.reason as u8);
            out.extend_from_slice(&e.revoked_at.to_be_bytes());
        }
    }

    /// The encoding (what travels in documents and files).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(25 + 42 * self.entries.len() + 64);
        self.encode_unsigned(&mut out);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes [`RevocationList::to_bytes`]; refuses more than [`MAX_LIST_BYTES`] and
    /// trailing bytes. Does not verify the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_LIST_BYTES {
            return Err(DecodeError::InvalidField {
                field: "revocation list",
                reason: "longer than 1 MiB",
            });
        }
        let mut r = Reader::new(bytes);
        if r.u8("format")? != FORMAT {
            return Err(DecodeError::InvalidField {
                field: "format",
                reason: "unknown revocation list format",
            });
        }
        let authority_id = r.array("authority_id")?;
        let serial = r.u32("serial")?;
        let issued_at = r.i64("issued_at")?;
        let count = r.u32("count")? as usize;
        // Each entry is at least 14 bytes: a count the bytes cannot hold is refused before
        // anything is allocated for it.
        if count > bytes.len() / 14 {
            return Err(DecodeError::Truncated("entries"));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let subject = match r.u8("entry tag")? {
                1 => Subject::Certificate(r.array("certificate fingerprint")?),
                2 => Subject::HostKey(r.u32("host key serial")?),
                3 => Subject::Mak(r.u32("MAK serial")?),
                _ => {
                    return Err(DecodeError::InvalidField {
                        field: "entry tag",
                        reason: "unknown subject",
                    });
                }
            };
            let reason = Reason::from_u8(r.u8("reason")?)?;
            let revoked_at = r.i64("revoked_at")?;
            entries.push(Entry {
                subject,
                reason,
                revoked_at,
            });
        }
        let signature = r.array("signature")?;
        r.finish()?;
        Ok(Self {
            authority_id,
            serial,
            issued_at,
            entries,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn subject() -> impl Strategy<Value = Subject> {
        prop_oneof![
            any::<[u8; 32]>().prop_map(Subject::Certificate),
            any::<u32>().prop_map(Subject::HostKey),
            any::<u32>().prop_map(Subject::Mak),
        ]
    }

    proptest! {
        #[test]
        fn lists_round_trip(
            serial in any::<u32>(),
            issued_at in any::<i64>(),
            entries in proptest::collection::vec((subject(), 0usize..5, any::<i64>()), 0..50),
        ) {
            let list = RevocationList {
                authority_id: [4; 8],
                serial,
                issued_at,
                entries: entries
                    .into_iter()
                    .map(|(subject, r, revoked_at)| Entry { subject, reason: Reason::ALL[r], revoked_at })
                    .collect(),
                signature: [6; 64],
            };
            let bytes = list.to_bytes();
            prop_assert_eq!(RevocationList::from_bytes(&bytes), Ok(list));
            // Any truncation is refused, never a panic.
            for cut in 0..bytes.len() {
                prop_assert!(RevocationList::from_bytes(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = RevocationList::from_bytes(&bytes);
        }
    }

    #[test]
    fn a_count_larger_than_the_bytes_is_refused_before_allocating() {
        let mut bytes = vec![FORMAT];
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(&0i64.to_be_bytes());
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            RevocationList::from_bytes(&bytes),
            Err(DecodeError::Truncated("entries"))
        );
    }
}
