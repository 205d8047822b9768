//! Tree heads: a tree's size and root at a time, and the authority's signature over them.
//!
//! Binary form of a signed tree head, version 1 (113 bytes, big-endian):
//! `version (1) || size (u64) || timestamp_ms (i64) || root (32) || signature (64)`.
//! The signature is Ed25519 by the authority root key over [`TreeHead::signed_bytes`]:
//! `"tally/v1/tree-head\0" || version (1) || size || timestamp_ms || root`. The armored text is
//! `tally-tree-head-v1 HEX` (docs/PROTOCOL.md, "Transparency log").

use crate::codec::{Reader, armor, dearmor};
use crate::{FormatError, Hash};

/// The label of a signed tree head file.
pub const LABEL: &str = "tally-tree-head-v1";
/// The domain separator of the authority's signature over a tree head.
pub const SIGNING_CONTEXT: &[u8] = b"tally/v1/tree-head\0";
/// Bytes of a signed tree head.
pub const SIGNED_LEN: usize = 1 + 8 + 8 + 32 + 64;

/// A tree's size and root at a time: what the authority signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeHead {
    /// Leaves in the tree.
    pub size: u64,
    /// `MTH` of the tree (RFC 9162 2.1.1).
    pub root: Hash,
    /// When it was signed, Unix milliseconds.
    pub timestamp_ms: i64,
}

impl TreeHead {
    /// The bytes the authority signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + 1 + 8 + 8 + 32);
        m.extend_from_slice(SIGNING_CONTEXT);
        m.push(1);
        m.extend_from_slice(&self.size.to_be_bytes());
        m.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        m.extend_from_slice(&self.root);
        m
    }

    /// This head with its signature.
    pub fn with_signature(self, signature: [u8; 64]) -> SignedTreeHead {
        SignedTreeHead {
            size: self.size,
            root: self.root,
            timestamp_ms: self.timestamp_ms,
            signature,
        }
    }
}

/// A tree head signed by the authority root key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignedTreeHead {
    /// Leaves in the tree.
    pub size: u64,
    /// `MTH` of the tree.
    pub root: Hash,
    /// When it was signed, Unix milliseconds.
    pub timestamp_ms: i64,
    /// Ed25519 over [`TreeHead::signed_bytes`].
    pub signature: [u8; 64],
}

impl SignedTreeHead {
    /// The head without its signature.
    pub fn head(&self) -> TreeHead {
        TreeHead {
            size: self.size,
            root: self.root,
            timestamp_ms: self.timestamp_ms,
        }
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        self.head().signed_bytes()
    }

    /// The binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SIGNED_LEN);
        self.encode(&mut b);
        b
    }

    /// Appends the binary form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(1);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.root);
        out.extend_from_slice(&self.signature);
    }

    /// Reads the binary form from `r`.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, FormatError> {
        r.version()?;
        Ok(Self {
            size: r.u64()?,
            timestamp_ms: r.i64()?,
            root: r.array()?,
            signature: r.array()?,
        })
    }

    /// Parses the binary form (exactly [`SIGNED_LEN`] bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes, "signed tree head");
        let head = Self::read(&mut r)?;
        r.finish()?;
        Ok(head)
    }

    /// The armored text (`tally-tree-head-v1 HEX`).
    pub fn to_text(&self) -> String {
        armor(LABEL, &self.to_bytes())
    }

    /// Parses the armored text.
    pub fn from_text(text: &str) -> Result<Self, FormatError> {
        Self::from_bytes(&dearmor(LABEL, text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let h = TreeHead {
            size: 7,
            root: [3; 32],
            timestamp_ms: 1_800_000_000_000,
        }
        .with_signature([9; 64]);
        assert_eq!(h.to_bytes().len(), SIGNED_LEN);
        assert_eq!(SignedTreeHead::from_text(&h.to_text()), Ok(h));
        let mut long = h.to_bytes();
        long.push(0);
        assert_eq!(
            SignedTreeHead::from_bytes(&long),
            Err(FormatError::TrailingBytes("signed tree head"))
        );
        assert_eq!(
            SignedTreeHead::from_bytes(&long[..10]),
            Err(FormatError::Truncated("signed tree head"))
        );
        let mut v2 = h.to_bytes();
        v2[0] = 2;
        assert!(matches!(
            SignedTreeHead::from_bytes(&v2),
            Err(FormatError::Version { version: 2, .. })
        ));
        // The signed bytes start with the context and cover size, time and root.
        let m = h.signed_bytes();
        assert!(m.starts_with(SIGNING_CONTEXT));
        assert_eq!(m.len(), SIGNING_CONTEXT.len() + 1 + 8 + 8 + 32);
    }
}
