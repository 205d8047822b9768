//! Checking the authority's transparency log (X8) under the authority key a verifier trusts.
//!
//! `tally-log` has the RFC 9162 algorithms and the file formats; this module adds what needs
//! the trust anchor: a signed tree head is the authority root key's Ed25519 signature over
//! `tally_log::TreeHead::signed_bytes` (context `tally/v1/tree-head\0`), and every check here
//! verifies that signature before it believes a size or a root. Errors say what a person
//! should conclude (the log was rewritten, the proof is for another object).

use ed25519_dalek::Signature;
use tally_log::{ConsistencyProof, FormatError, InclusionProof, ProofError, SignedTreeHead};
use thiserror::Error;

use crate::trust::TrustAnchor;

pub use tally_log::{EntryKind, LogEntry};

/// Why a log proof or head is not believed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogError {
    /// A file or answer of the log's formats does not parse.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The head is not signed by the trusted authority.
    #[error(
        "the tree head of size {size} is not signed by the authority you trust (forged, damaged, or another authority's)"
    )]
    BadHeadSignature {
        /// The head's size.
        size: u64,
    },
    /// The inclusion proof does not put the entry in the head.
    #[error("the entry is not proven to be in the log's head of size {size}: {reason}")]
    NotIncluded {
        /// The head's size.
        size: u64,
        /// What failed.
        reason: ProofError,
    },
    /// The newer head is smaller than the older one.
    #[error(
        "the log was rewritten: the authority's head has size {new}, smaller than the head of size {old} you kept"
    )]
    Shrunk {
        /// The kept size.
        old: u64,
        /// The newer size.
        new: u64,
    },
    /// The newer head does not extend the older one.
    #[error(
        "the log was rewritten: the head of size {new} does not extend the head of size {old} you kept ({reason})"
    )]
    Rewritten {
        /// The kept size.
        old: u64,
        /// The newer size.
        new: u64,
        /// What failed.
        reason: ProofError,
    },
    /// The consistency proof is for other sizes than the two heads.
    #[error(
        "the consistency proof is for sizes {proof_old} to {proof_new}, not for the heads given ({old} to {new})"
    )]
    WrongSizes {
        /// The proof's older size.
        proof_old: u64,
        /// The proof's newer size.
        proof_new: u64,
        /// The older head's size.
        old: u64,
        /// The newer head's size.
        new: u64,
    },
}

/// Checks the authority's signature on a tree head.
pub fn verify_head(anchor: &TrustAnchor, head: &SignedTreeHead) -> Result<(), LogError> {
    anchor
        .key()
        .verify_strict(
            &head.signed_bytes(),
            &Signature::from_bytes(&head.signature),
        )
        .map_err(|_| LogError::BadHeadSignature { size: head.size })
}

/// Checks an inclusion proof: the head is the authority's, and the path leads from the entry
/// to its root (RFC 9162 2.1.3.2). What the entry holds is the caller's to compare.
pub fn verify_inclusion(anchor: &TrustAnchor, proof: &InclusionProof) -> Result<(), LogError> {
    verify_head(anchor, &proof.head)?;
    proof.verify_path().map_err(|reason| LogError::NotIncluded {
        size: proof.head.size,
        reason,
    })
}

/// Checks that the log of `new` extends the log of `old` (a head kept earlier) by appending
/// only: both heads are the authority's and `proof` is a valid RFC 9162 consistency proof
/// between their roots.
pub fn verify_consistency(
    anchor: &TrustAnchor,
    old: &SignedTreeHead,
    new: &SignedTreeHead,
    proof: &ConsistencyProof,
) -> Result<(), LogError> {
    verify_head(anchor, old)?;
    verify_head(anchor, new)?;
    if new.size < old.size {
        return Err(LogError::Shrunk {
            old: old.size,
            new: new.size,
        });
    }
    if proof.old_size != old.size || proof.new_size != new.size {
        return Err(LogError::WrongSizes {
            proof_old: proof.old_size,
            proof_new: proof.new_size,
            old: old.size,
            new: new.size,
        });
    }
    proof
        .verify(&old.root, &new.root)
        .map_err(|reason| LogError::Rewritten {
            old: old.size,
            new: new.size,
            reason,
        })
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::Signer;
    use tally_log::TreeHead;
    use tally_log::merkle::{consistency_proof, inclusion_proof, leaf_hash, root};

    use super::*;
    use crate::trust::generate_key;

    // X8: heads verify only under their authority; a rewritten log fails with a clear message.
    #[test]
    fn x8_heads_proofs_and_rewrites() {
        let key = generate_key();
        let anchor = TrustAnchor::new(key.verifying_key());
        let leaves: Vec<_> = (0..9u8).map(|i| leaf_hash(&[i])).collect();
        let head = |n: usize, leaves: &[[u8; 32]]| {
            let h = TreeHead {
                size: n as u64,
                root: root(&leaves[..n]),
                timestamp_ms: 1,
            };
            h.with_signature(key.sign(&h.signed_bytes()).to_bytes())
        };
        let (old, new) = (head(5, &leaves), head(9, &leaves));
        verify_head(&anchor, &old).expect("signed");
        let other = TrustAnchor::new(generate_key().verifying_key());
        assert_eq!(
            verify_head(&other, &old),
            Err(LogError::BadHeadSignature { size: 5 })
        );
        let proof = ConsistencyProof {
            old_size: 5,
            new_size: 9,
            path: consistency_proof(5, &leaves).expect("sizes"),
        };
        verify_consistency(&anchor, &old, &new, &proof).expect("consistent");
        assert!(matches!(
            verify_consistency(&anchor, &new, &old, &proof),
            Err(LogError::Shrunk { old: 9, new: 5 })
        ));
        // Entry 2 changed: the authority's new head and proof come from the rewritten tree.
        let mut rewritten = leaves.clone();
        rewritten[2] = leaf_hash(b"changed");
        let new2 = head(9, &rewritten);
        let proof2 = ConsistencyProof {
            old_size: 5,
            new_size: 9,
            path: consistency_proof(5, &rewritten).expect("sizes"),
        };
        let err = verify_consistency(&anchor, &old, &new2, &proof2).expect_err("rewritten");
        assert!(
            err.to_string().starts_with(
                "the log was rewritten: the head of size 9 does not extend the head of size 5 you kept"
            ),
            "{err}"
        );
        let entry = LogEntry {
            kind: EntryKind::Catalog,
            timestamp_ms: 3,
            object: b"x".to_vec(),
        };
        let mut l = leaves.clone();
        l[4] = entry.leaf_hash();
        let inc = InclusionProof {
            head: head(9, &l),
            index: 4,
            path: inclusion_proof(4, &l).expect("in range"),
            entry,
        };
        verify_inclusion(&anchor, &inc).expect("included");
        let mut bad = inc.clone();
        bad.index = 3;
        assert!(matches!(
            verify_inclusion(&anchor, &bad),
            Err(LogError::NotIncluded { size: 9, .. })
        ));
    }
}
