//! Proof files: what a host keeps beside its certificate, and what a verifier fetches to check
//! that a log grew only by appending.
//!
//! Inclusion proof, version 1 (`tally-log-inclusion-v1 HEX`):
//! `version (1) || signed tree head (113) || leaf index (u64) || entry length (u32) ||
//! leaf input || path count (u8) || path (32 each, leaf to root)`.
//!
//! Consistency proof, version 1 (`tally-log-consistency-v1 HEX`):
//! `version (1) || old size (u64) || new size (u64) || path count (u8) || path (32 each)`.

use crate::FormatError;
use crate::codec::{Reader, armor, dearmor};
use crate::entry::{LogEntry, MAX_OBJECT};
use crate::head::SignedTreeHead;
use crate::merkle::{Hash, MAX_PATH, ProofError, verify_consistency, verify_inclusion};

/// The label of an inclusion proof file.
pub const INCLUSION_LABEL: &str = "tally-log-inclusion-v1";
/// The label of a consistency proof file.
pub const CONSISTENCY_LABEL: &str = "tally-log-consistency-v1";

/// An entry, where it is in the log, and the path from it to a signed tree head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InclusionProof {
    /// The head the path leads to.
    pub head: SignedTreeHead,
    /// The entry's leaf index.
    pub index: u64,
    /// The entry.
    pub entry: LogEntry,
    /// `PATH(index, D[head.size])`.
    pub path: Vec<Hash>,
}

fn write_path(out: &mut Vec<u8>, path: &[Hash]) {
    // Paths are at most MAX_PATH (64) long: a tree has fewer than 2^64 leaves.
    out.push(path.len().min(MAX_PATH) as u8);
    for h in path.iter().take(MAX_PATH) {
        out.extend_from_slice(h);
    }
}

fn read_path(r: &mut Reader<'_>) -> Result<Vec<Hash>, FormatError> {
    let n = usize::from(r.u8()?);
    if n > MAX_PATH {
        return Err(FormatError::TooLong("proof path"));
    }
    (0..n).map(|_| r.array()).collect()
}

impl InclusionProof {
    /// Checks the Merkle path (RFC 9162 2.1.3.2) from the entry to the head's root. The
    /// head's signature is the caller's to check (`tally_core::transparency`).
    pub fn verify_path(&self) -> Result<(), ProofError> {
        verify_inclusion(
            self.index,
            self.head.size,
            &self.entry.leaf_hash(),
            &self.path,
            &self.head.root,
        )
    }

    /// The binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let input = self.entry.leaf_input();
        let mut b = Vec::with_capacity(1 + 113 + 8 + 4 + input.len() + 1 + 32 * self.path.len());
        b.push(1);
        self.head.encode(&mut b);
        b.extend_from_slice(&self.index.to_be_bytes());
        b.extend_from_slice(&(input.len() as u32).to_be_bytes());
        b.extend_from_slice(&input);
        write_path(&mut b, &self.path);
        b
    }

    /// Parses the binary form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, "inclusion proof");
        r.version()?;
        let head = SignedTreeHead::read(&mut r)?;
        let index = r.u64()?;
        let len = r.u32()? as usize;
        if len > MAX_OBJECT + 14 {
            return Err(FormatError::TooLong("log entry"));
        }
        let entry = LogEntry::from_leaf_input(r.take(len)?)?;
        let path = read_path(&mut r)?;
        r.finish()?;
        Ok(Self {
            head,
            index,
            entry,
            path,
        })
    }

    /// The armored text.
    pub fn to_text(&self) -> String {
        armor(INCLUSION_LABEL, &self.to_bytes())
    }

    /// Parses the armored text.
    pub fn from_text(text: &str) -> Result<Self, FormatError> {
        Self::from_bytes(&dearmor(INCLUSION_LABEL, text)?)
    }
}

/// A proof that the tree of `old_size` leaves is a prefix of the tree of `new_size` leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// The older size.
    pub old_size: u64,
    /// The newer size.
    pub new_size: u64,
    /// `PROOF(old_size, D[new_size])`.
    pub path: Vec<Hash>,
}

impl ConsistencyProof {
    /// Checks the path between two roots (RFC 9162 2.1.4.2); the sizes must be the proof's.
    pub fn verify(&self, old_root: &Hash, new_root: &Hash) -> Result<(), ProofError> {
        verify_consistency(self.old_size, self.new_size, old_root, new_root, &self.path)
    }

    /// The binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(1 + 16 + 1 + 32 * self.path.len());
        b.push(1);
        b.extend_from_slice(&self.old_size.to_be_bytes());
        b.extend_from_slice(&self.new_size.to_be_bytes());
        write_path(&mut b, &self.path);
        b
    }

    /// Parses the binary form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, "consistency proof");
        r.version()?;
        let old_size = r.u64()?;
        let new_size = r.u64()?;
        let path = read_path(&mut r)?;
        r.finish()?;
        Ok(Self {
            old_size,
            new_size,
            path,
        })
    }

    /// The armored text.
    pub fn to_text(&self) -> String {
        armor(CONSISTENCY_LABEL, &self.to_bytes())
    }

    /// Parses the armored text.
    pub fn from_text(text: &str) -> Result<Self, FormatError> {
        Self::from_bytes(&dearmor(CONSISTENCY_LABEL, text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::EntryKind;
    use crate::head::TreeHead;
    use crate::merkle::{consistency_proof, inclusion_proof, leaf_hash, root};

    #[test]
    fn proof_files_round_trip_and_verify() {
        let entries: Vec<LogEntry> = (0..5u8)
            .map(|i| LogEntry {
                kind: EntryKind::HostCertificate,
                timestamp_ms: i64::from(i),
                object: vec![i; 3],
            })
            .collect();
        let leaves: Vec<Hash> = entries.iter().map(LogEntry::leaf_hash).collect();
        let head = TreeHead {
            size: 5,
            root: root(&leaves),
            timestamp_ms: 9,
        }
        .with_signature([0; 64]);
        let proof = InclusionProof {
            head,
            index: 3,
            entry: entries[3].clone(),
            path: inclusion_proof(3, &leaves).expect("in range"),
        };
        let back = InclusionProof::from_text(&proof.to_text()).expect("parses");
        assert_eq!(back, proof);
        back.verify_path().expect("verifies");
        let mut other = back.clone();
        other.entry.object[0] ^= 1;
        assert_eq!(other.verify_path(), Err(ProofError::InclusionRootMismatch));
        assert!(InclusionProof::from_text(&head.to_text()).is_err());

        let c = ConsistencyProof {
            old_size: 2,
            new_size: 5,
            path: consistency_proof(2, &leaves).expect("sizes"),
        };
        let back = ConsistencyProof::from_text(&c.to_text()).expect("parses");
        assert_eq!(back, c);
        back.verify(&root(&leaves[..2]), &head.root)
            .expect("consistent");
        assert!(back.verify(&leaf_hash(b"x"), &head.root).is_err());
    }
}
