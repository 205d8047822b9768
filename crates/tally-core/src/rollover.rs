//! Root rollover (X8): a statement by which the authority hands trust from its old root key to a
//! new one, and the chain of such statements a client or host has verified.
//!
//! A client trusts one root (`authority.pub`). The vendor replaces that root by signing a
//! [`RootRollover`] with it: "from now on, also trust this new key". The new key signs the same
//! bytes too (proof that whoever made the statement holds the new key, so no statement can hand
//! trust to a key nobody controls, or to someone else's key). A [`Chain`] starts at the root the
//! verifier trusts and accepts only statements signed by its newest key; every key in it then
//! verifies certificates, MAK claims and catalogs ([`TrustAnchor`] holds them).
//!
//! The old root keeps verifying after a rollover, unless the statement sets `old_root_until`:
//! from that instant on, nothing signed by the old root is accepted (a compromised root). A
//! planned rollover (moving the root into an HSM, say) leaves it unset, so the certificates the
//! old root issued stay valid until they expire.
//!
//! Binary format (185 bytes, fits one 250-byte frame, R15), all integers big-endian:
//!
//! ```text
//! offset size field
//!      0    1 version (1)
//!      1    8 old_authority_id   first 8 bytes of SHA-256 of the old root's public key
//!      9   32 new_public_key     the new root's Ed25519 public key
//!     41    8 issued_at          Unix seconds, signed
//!     49    8 old_root_until     Unix seconds, signed; 0: the old root stays trusted
//!     57   64 signature_by_old   Ed25519 by the old root over CONTEXT_OLD || bytes 0..57
//!    121   64 signature_by_new   Ed25519 by the new root over CONTEXT_NEW || bytes 0..57
//! ```
//!
//! Text file (`authority.rollover`): one armored statement per line,
//! `tally-root-rollover-v1 HEX`, oldest first; blank lines and `#` comments are ignored.

use ed25519_dalek::{Signature, VerifyingKey};
use thiserror::Error;

use crate::hex::{from_hex, to_hex};
use crate::time::Timestamp;
use crate::trust::{TrustAnchor, authority_id};

/// Encoded length of a statement.
pub const STATEMENT_LEN: usize = 185;
/// Length of the signed part.
const BODY_LEN: usize = 57;
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Label of a statement in a text file.
pub const LABEL: &str = "tally-root-rollover-v1";
/// Domain separator of the old root's signature.
pub const CONTEXT_OLD: &[u8] = b"tally/v1/root-rollover\0";
/// Domain separator of the new root's signature (proof of possession).
pub const CONTEXT_NEW: &[u8] = b"tally/v1/root-rollover-possession\0";

/// Why a rollover statement was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RolloverError {
    /// The bytes are not a statement.
    #[error("rollover statement is malformed: {0}")]
    Malformed(&'static str),
    /// The old root's signature is not by the newest root the verifier trusts.
    #[error(
        "rollover statement is not signed by the root this client trusts (it names root {claimed}, this client's newest root is {trusted})"
    )]
    NotSignedByTrustedRoot {
        /// The old root id the statement names, hex.
        claimed: String,
        /// The id of the newest root the verifier trusts, hex.
        trusted: String,
    },
    /// The new key did not sign the statement.
    #[error("rollover statement is not signed by its new root (no proof of possession)")]
    NoProofOfPossession,
    /// The new key is already trusted (a loop).
    #[error("rollover statement hands trust to a root already in the chain")]
    Loop,
}

/// A root rollover statement (see the module docs for the format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootRollover {
    /// The old root's id ([`authority_id`]).
    pub old_authority_id: [u8; 8],
    /// The new root's public key.
    pub new_public_key: [u8; 32],
    /// When it was signed, Unix seconds.
    pub issued_at: i64,
    /// Unix seconds after which the old root is no longer trusted; 0 for never.
    pub old_root_until: i64,
    /// The old root's signature.
    pub signature_by_old: [u8; 64],
    /// The new root's signature.
    pub signature_by_new: [u8; 64],
}

impl RootRollover {
    /// An unsigned statement (both signatures zero): sign [`Self::message_for_old`] and
    /// [`Self::message_for_new`] and fill them in.
    pub fn unsigned(
        old: &VerifyingKey,
        new: &VerifyingKey,
        issued_at: Timestamp,
        old_root_until: Option<Timestamp>,
    ) -> Self {
        Self {
            old_authority_id: authority_id(old),
            new_public_key: new.to_bytes(),
            issued_at: issued_at.seconds(),
            old_root_until: old_root_until.map_or(0, |t| t.seconds().max(1)),
            signature_by_old: [0; 64],
            signature_by_new: [0; 64],
        }
    }

    fn body(&self) -> [u8; BODY_LEN] {
        let mut b = [0u8; BODY_LEN];
        b[0] = VERSION;
        b[1..9].copy_from_slice(&self.old_authority_id);
        b[9..41].copy_from_slice(&self.new_public_key);
        b[41..49].copy_from_slice(&self.issued_at.to_be_bytes());
        b[49..57].copy_from_slice(&self.old_root_until.to_be_bytes());
        b
    }

    /// What the old root signs.
    pub fn message_for_old(&self) -> Vec<u8> {
        [CONTEXT_OLD, &self.body()].concat()
    }

    /// What the new root signs.
    pub fn message_for_new(&self) -> Vec<u8> {
        [CONTEXT_NEW, &self.body()].concat()
    }

    /// The binary encoding.
    pub fn to_bytes(&self) -> [u8; STATEMENT_LEN] {
        let mut out = [0u8; STATEMENT_LEN];
        out[..BODY_LEN].copy_from_slice(&self.body());
        out[57..121].copy_from_slice(&self.signature_by_old);
        out[121..].copy_from_slice(&self.signature_by_new);
        out
    }

    /// Decodes exactly one statement (no trailing bytes). Signatures are not checked here.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RolloverError> {
        let b: &[u8; STATEMENT_LEN] = bytes
            .try_into()
            .map_err(|_| RolloverError::Malformed("wrong length"))?;
        if b[0] != VERSION {
            return Err(RolloverError::Malformed("unknown version"));
        }
        let mut s = Self {
            old_authority_id: [0; 8],
            new_public_key: [0; 32],
            issued_at: 0,
            old_root_until: 0,
            signature_by_old: [0; 64],
            signature_by_new: [0; 64],
        };
        s.old_authority_id.copy_from_slice(&b[1..9]);
        s.new_public_key.copy_from_slice(&b[9..41]);
        let mut n = [0u8; 8];
        n.copy_from_slice(&b[41..49]);
        s.issued_at = i64::from_be_bytes(n);
        n.copy_from_slice(&b[49..57]);
        s.old_root_until = i64::from_be_bytes(n);
        if s.old_root_until < 0 {
            return Err(RolloverError::Malformed("old_root_until is negative"));
        }
        s.signature_by_old.copy_from_slice(&b[57..121]);
        s.signature_by_new.copy_from_slice(&b[121..]);
        Ok(s)
    }

    /// The armored line (`tally-root-rollover-v1 HEX` and a newline).
    pub fn to_text(&self) -> String {
        format!("{LABEL} {}\n", to_hex(&self.to_bytes()))
    }

    /// The new root's key, if it is a valid Ed25519 point.
    pub fn new_key(&self) -> Result<VerifyingKey, RolloverError> {
        VerifyingKey::from_bytes(&self.new_public_key)
            .map_err(|_| RolloverError::Malformed("new public key is not an Ed25519 key"))
    }

    /// When the old root stops being trusted, if ever.
    pub fn old_root_until(&self) -> Option<Timestamp> {
        (self.old_root_until != 0).then(|| Timestamp(self.old_root_until.saturating_mul(1000)))
    }

    /// Checks both signatures: the old one under `old`, the new one under the key it names.
    pub fn verify(&self, old: &VerifyingKey) -> Result<VerifyingKey, RolloverError> {
        let not_signed = || RolloverError::NotSignedByTrustedRoot {
            claimed: to_hex(&self.old_authority_id),
            trusted: to_hex(&authority_id(old)),
        };
        if self.old_authority_id != authority_id(old) {
            return Err(not_signed());
        }
        old.verify_strict(
            &self.message_for_old(),
            &Signature::from_bytes(&self.signature_by_old),
        )
        .map_err(|_| not_signed())?;
        let new = self.new_key()?;
        new.verify_strict(
            &self.message_for_new(),
            &Signature::from_bytes(&self.signature_by_new),
        )
        .map_err(|_| RolloverError::NoProofOfPossession)?;
        Ok(new)
    }
}

/// Parses a rollover file: armored statements, one per line, oldest first.
pub fn parse_file(text: &str) -> Result<Vec<RootRollover>, RolloverError> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        if words.next() != Some(LABEL) {
            return Err(RolloverError::Malformed(
                "not a tally-root-rollover-v1 line",
            ));
        }
        let bytes = words
            .next()
            .and_then(from_hex)
            .ok_or(RolloverError::Malformed("bad hex"))?;
        if words.next().is_some() {
            return Err(RolloverError::Malformed(
                "trailing text after the statement",
            ));
        }
        out.push(RootRollover::from_bytes(&bytes)?);
    }
    Ok(out)
}

/// The statements a verifier accepted, starting at the root it trusts.
#[derive(Clone, Debug)]
pub struct Chain {
    anchor: TrustAnchor,
    statements: Vec<RootRollover>,
}

/// What [`Chain::accept`] did with a valid statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accepted {
    /// It extends the chain: its new root is trusted from now on.
    Added,
    /// It is already in the chain.
    Known,
}

impl Chain {
    /// A chain that trusts `root` alone.
    pub fn new(root: VerifyingKey) -> Self {
        Self {
            anchor: TrustAnchor::new(root),
            statements: Vec::new(),
        }
    }

    /// Accepts `statement` if it is signed by the newest root of the chain (and by its own new
    /// root); a statement already accepted is [`Accepted::Known`].
    pub fn accept(&mut self, statement: RootRollover) -> Result<Accepted, RolloverError> {
        if self.statements.contains(&statement) {
            return Ok(Accepted::Known);
        }
        let new = statement.verify(self.anchor.current())?;
        if self.anchor.trusts_key(&new) {
            return Err(RolloverError::Loop);
        }
        self.anchor.push_successor(new, statement.old_root_until());
        self.statements.push(statement);
        Ok(Accepted::Added)
    }

    /// Accepts every statement of `statements` that extends the chain, in whatever order they
    /// come; returns how many were added and the refusals of the rest.
    pub fn accept_all(
        &mut self,
        statements: &[RootRollover],
    ) -> (usize, Vec<(RootRollover, RolloverError)>) {
        let mut pending: Vec<RootRollover> = statements.to_vec();
        let mut added = 0;
        loop {
            let mut refused = Vec::new();
            let before = added;
            for s in pending {
                match self.accept(s) {
                    Ok(Accepted::Added) => added += 1,
                    Ok(Accepted::Known) => {}
                    Err(e) => refused.push((s, e)),
                }
            }
            if added == before || refused.is_empty() {
                return (added, refused);
            }
            pending = refused.into_iter().map(|(s, _)| s).collect();
        }
    }

    /// The anchor: the root and every root handed trust since.
    pub fn anchor(&self) -> &TrustAnchor {
        &self.anchor
    }

    /// The anchor, by value.
    pub fn into_anchor(self) -> TrustAnchor {
        self.anchor
    }

    /// The accepted statements, oldest first.
    pub fn statements(&self) -> &[RootRollover] {
        &self.statements
    }

    /// The chain as a rollover file.
    pub fn to_text(&self) -> String {
        self.statements.iter().map(RootRollover::to_text).collect()
    }
}

#[cfg(test)]
mod tests;
