//! What the log holds: one entry per object the authority signed.
//!
//! The leaf input (RFC 9162's `d(i)`) of an entry is its canonical encoding, version 1:
//! `version (1) || kind (u8) || timestamp_ms (i64, big-endian) || length (u32, big-endian) ||
//! object`, where `object` is the exact signed object as delivered (docs/PROTOCOL.md,
//! "Transparency log", lists the object of each kind). The leaf hash is
//! `SHA-256(0x00 || leaf input)`.

use crate::FormatError;
use crate::codec::Reader;
use crate::merkle::{Hash, leaf_hash};

/// The largest object an entry may hold (a signed catalog or revocation list is the largest).
pub const MAX_OBJECT: usize = 16 * 1024 * 1024;

/// What kind of signed object an entry holds, and how it was issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum EntryKind {
    /// A host certificate issued online (`POST /v1/host-activations`): its 127-byte encoding.
    HostCertificate,
    /// A host certificate issued for a confirmation ID (offline activation).
    HostCertificateOffline,
    /// A host certificate issued by `tally authority certify` (no activation limits).
    HostCertificateManual,
    /// A MAK activation claim issued online: its signed bytes then the signature.
    MakClaim,
    /// A MAK activation claim issued for a confirmation ID.
    MakClaimOffline,
    /// A signed catalog (R24): the file's bytes.
    Catalog,
    /// A signed revocation list (X7): its bytes.
    RevocationList,
    /// A root rollover statement (X8): its bytes.
    RootRollover,
}

impl EntryKind {
    /// Every kind, in code order.
    pub const ALL: [EntryKind; 8] = [
        Self::HostCertificate,
        Self::HostCertificateOffline,
        Self::HostCertificateManual,
        Self::MakClaim,
        Self::MakClaimOffline,
        Self::Catalog,
        Self::RevocationList,
        Self::RootRollover,
    ];

    /// The byte in the leaf input.
    pub fn code(self) -> u8 {
        match self {
            Self::HostCertificate => 1,
            Self::HostCertificateOffline => 2,
            Self::HostCertificateManual => 3,
            Self::MakClaim => 4,
            Self::MakClaimOffline => 5,
            Self::Catalog => 6,
            Self::RevocationList => 7,
            Self::RootRollover => 8,
        }
    }

    /// The kind of a byte.
    pub fn from_code(code: u8) -> Result<Self, FormatError> {
        Self::ALL
            .into_iter()
            .find(|k| k.code() == code)
            .ok_or(FormatError::UnknownKind(code))
    }

    /// A stable name (JSON output, `--json`).
    pub fn name(self) -> &'static str {
        match self {
            Self::HostCertificate => "host_certificate",
            Self::HostCertificateOffline => "host_certificate_offline",
            Self::HostCertificateManual => "host_certificate_manual",
            Self::MakClaim => "mak_claim",
            Self::MakClaimOffline => "mak_claim_offline",
            Self::Catalog => "catalog",
            Self::RevocationList => "revocation_list",
            Self::RootRollover => "root_rollover",
        }
    }

    /// Whether the object is a host certificate.
    pub fn is_host_certificate(self) -> bool {
        matches!(
            self,
            Self::HostCertificate | Self::HostCertificateOffline | Self::HostCertificateManual
        )
    }
}

impl std::fmt::Display for EntryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One logged object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// What it is.
    pub kind: EntryKind,
    /// When the authority logged it, Unix milliseconds.
    pub timestamp_ms: i64,
    /// The exact signed object.
    pub object: Vec<u8>,
}

impl LogEntry {
    /// The canonical encoding hashed into the tree.
    pub fn leaf_input(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(14 + self.object.len());
        b.push(1);
        b.push(self.kind.code());
        b.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        // Objects are bounded by MAX_OBJECT (< 2^32) where they are made and read.
        b.extend_from_slice(&(self.object.len() as u32).to_be_bytes());
        b.extend_from_slice(&self.object);
        b
    }

    /// The leaf hash: `SHA-256(0x00 || leaf input)`.
    pub fn leaf_hash(&self) -> Hash {
        leaf_hash(&self.leaf_input())
    }

    /// Reads a leaf input from `r`.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        r.version()?;
        let kind = EntryKind::from_code(r.u8()?)?;
        let timestamp_ms = r.i64()?;
        let len = r.u32()? as usize;
        if len > MAX_OBJECT {
            return Err(FormatError::TooLong("log entry"));
        }
        Ok(Self {
            kind,
            timestamp_ms,
            object: r.take(len)?.to_vec(),
        })
    }

    /// Parses a leaf input (no trailing bytes).
    pub fn from_leaf_input(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, "log entry");
        let e = Self::read(&mut r)?;
        r.finish()?;
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_codes_are_refused() {
        for k in EntryKind::ALL {
            assert_eq!(EntryKind::from_code(k.code()), Ok(k));
        }
        assert_eq!(EntryKind::from_code(0), Err(FormatError::UnknownKind(0)));
        assert_eq!(EntryKind::from_code(9), Err(FormatError::UnknownKind(9)));
    }

    #[test]
    fn leaf_input_is_canonical() {
        let e = LogEntry {
            kind: EntryKind::Catalog,
            timestamp_ms: 0x0102_0304_0506_0708,
            object: b"abc".to_vec(),
        };
        assert_eq!(
            e.leaf_input(),
            [1, 6, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 3, b'a', b'b', b'c']
        );
        assert_eq!(LogEntry::from_leaf_input(&e.leaf_input()), Ok(e.clone()));
        let mut long = e.leaf_input();
        long.push(0);
        assert!(LogEntry::from_leaf_input(&long).is_err());
        assert!(LogEntry::from_leaf_input(&e.leaf_input()[..15]).is_err());
    }
}
