//! Tally's transparency log (X8), free of I/O: the Merkle tree of RFC 9162 (Certificate
//! Transparency 2.0, section 2.1), its inclusion and consistency proofs, the signed tree head's
//! bytes and the log's entry and proof file formats.
//!
//! Nothing here signs or verifies a signature, reads a file or talks to a database: the
//! authority gives the leaf hashes it stored and signs [`TreeHead::signed_bytes`] with its root
//! key; `tally_core::transparency` checks the signature under the key a verifier trusts. This
//! crate depends on no Tally crate, so the algorithms can be read and tested alone.
//!
//! # Layout
//! - [`merkle`]: leaf and node hashes, the tree head of `n` leaves, inclusion and consistency
//!   proofs: generation from leaf hashes and the verification algorithms of RFC 9162 2.1.3.2
//!   and 2.1.4.2.
//! - [`head`]: the tree head and the signed tree head, binary and armored.
//! - [`entry`]: what is logged (kind, time, the exact signed object) and its canonical leaf
//!   input.
//! - [`files`]: inclusion and consistency proof files.
//! - [`codec`]: the small reader and armor the formats share.

pub mod codec;
pub mod entry;
pub mod files;
pub mod head;
pub mod merkle;

pub use entry::{EntryKind, LogEntry};
pub use files::{ConsistencyProof, InclusionProof};
pub use head::{SignedTreeHead, TreeHead};
pub use merkle::{Hash, ProofError};

use thiserror::Error;

/// Why bytes or a file of the log's formats could not be read.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// The first word is not the expected label.
    #[error("expected a '{expected}' file")]
    WrongLabel {
        /// The label that was expected.
        expected: &'static str,
    },
    /// The text is not `LABEL HEX`.
    #[error("'{0}' file is damaged (not one line of hex after its label)")]
    Damaged(&'static str),
    /// The bytes end early.
    #[error("{0} is truncated")]
    Truncated(&'static str),
    /// Bytes follow the end of the structure.
    #[error("{0} has trailing bytes")]
    TrailingBytes(&'static str),
    /// A version this build does not know.
    #[error("{what} version {version} is not supported (this build reads version 1)")]
    Version {
        /// What was being read.
        what: &'static str,
        /// The version found.
        version: u8,
    },
    /// An entry kind this build does not know.
    #[error("unknown log entry kind {0}")]
    UnknownKind(u8),
    /// A length or count over its bound.
    #[error("{0} is too long")]
    TooLong(&'static str),
}
