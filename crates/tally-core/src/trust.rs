//! The trust chain (R16): authority key → host certificate → signed response.
//!
//! A client trusts one authority public key. It accepts a response only if the host's
//! certificate verifies under that key, is within its validity, its key group and generation
//! cover the client's edition (R21), the response's signature verifies under the certified host
//! key over the exact request the client sent, and the nonce is its own.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use tally_proto::{ActivationResponse, CertificateBody, HostCertificate};
use thiserror::Error;

use crate::catalog::Edition;
use crate::keys::KeyGroup;
use crate::time::Timestamp;

// Re-exported so that callers elsewhere in the workspace keep compiling; the code is in `hex`.
pub use crate::hex::{from_hex, to_hex};

/// Why a certificate or response is not trusted.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrustError {
    /// The certificate was issued by another authority.
    #[error("host certificate was issued by another authority (not the one this client trusts)")]
    UnknownAuthority,
    /// The certificate was issued by a root that a rollover statement retired (X8).
    #[error(
        "host certificate was issued by a root this client retired at {until} (root rollover): the host must be certified again by the new root"
    )]
    RootRetired {
        /// When the root was retired.
        until: Timestamp,
    },
    /// The certificate's signature does not verify.
    #[error("host certificate signature is invalid")]
    BadCertificateSignature,
    /// The certificate is outside its validity period.
    #[error("host certificate is not valid at this time (valid {from} to {until})")]
    CertificateExpired {
        /// Start of validity.
        from: Timestamp,
        /// End of validity.
        until: Timestamp,
    },
    /// The certificate's key group or host key cannot be read.
    #[error("host certificate is malformed: {0}")]
    MalformedCertificate(&'static str),
    /// The response was signed with another certificate's key.
    #[error("response names a different host certificate")]
    FingerprintMismatch,
    /// The response's signature does not verify.
    #[error("response signature is invalid (forged or altered)")]
    BadResponseSignature,
    /// The response answers another request.
    #[error("response does not answer this request (nonce mismatch: replayed or misrouted)")]
    NonceMismatch,
    /// The host is not entitled to activate this edition.
    #[error("host's key group {host_group} generation {host_generation} does not cover {edition}")]
    GroupDoesNotCover {
        /// The host's group.
        host_group: KeyGroup,
        /// The host's generation.
        host_generation: u8,
        /// The edition's name.
        edition: String,
    },
}

/// Why a key or certificate file could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FileFormatError {
    /// The first word is not the expected label.
    #[error("expected a '{expected}' file")]
    WrongLabel {
        /// The label that was expected.
        expected: &'static str,
    },
    /// The payload is not hex of the right length.
    #[error("'{0}' file is damaged (bad hex or length)")]
    Damaged(&'static str),
    /// The certificate inside does not decode.
    #[error("certificate inside the file does not decode: {0}")]
    Certificate(#[from] tally_proto::DecodeError),
}

/// SHA-256 of arbitrary bytes.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The identifier certificates carry for an authority key: 8 bytes of its SHA-256.
pub fn authority_id(key: &VerifyingKey) -> [u8; 8] {
    let d = sha256(key.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&d[..8]);
    id
}

/// A certificate's fingerprint: SHA-256 of its canonical encoding.
pub fn fingerprint(cert: &HostCertificate) -> [u8; 32] {
    sha256(&cert.to_bytes())
}

/// Writes `label hex` plus a newline: the format of every key and certificate file.
pub fn armor(label: &str, bytes: &[u8]) -> String {
    format!("{label} {}\n", to_hex(bytes))
}

/// Reads an [`armor`]ed file, checking its label.
pub fn dearmor(label: &'static str, text: &str) -> Result<Vec<u8>, FileFormatError> {
    let mut words = text.split_whitespace();
    if words.next() != Some(label) {
        return Err(FileFormatError::WrongLabel { expected: label });
    }
    let bytes = words
        .next()
        .and_then(from_hex)
        .ok_or(FileFormatError::Damaged(label))?;
    if words.next().is_some() {
        return Err(FileFormatError::Damaged(label));
    }
    Ok(bytes)
}

fn fixed<const N: usize>(label: &'static str, v: Vec<u8>) -> Result<[u8; N], FileFormatError> {
    v.try_into().map_err(|_| FileFormatError::Damaged(label))
}

/// File labels.
pub mod labels {
    /// An authority public key.
    pub const AUTHORITY_PUBLIC: &str = "tally-authority-public-key-v1";
    /// An authority secret key.
    pub const AUTHORITY_SECRET: &str = "tally-authority-secret-key-v1";
    /// A host secret key.
    pub const HOST_SECRET: &str = "tally-host-secret-key-v1";
    /// A host public key.
    pub const HOST_PUBLIC: &str = "tally-host-public-key-v1";
    /// A host certificate.
    pub const HOST_CERTIFICATE: &str = "tally-host-certificate-v1";
}

/// Parses an authority public key file.
pub fn parse_authority_public(text: &str) -> Result<TrustAnchor, FileFormatError> {
    let bytes = fixed::<32>(
        labels::AUTHORITY_PUBLIC,
        dearmor(labels::AUTHORITY_PUBLIC, text)?,
    )?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| FileFormatError::Damaged(labels::AUTHORITY_PUBLIC))?;
    Ok(TrustAnchor::new(key))
}

/// Parses a secret key file with the given label.
pub fn parse_secret(label: &'static str, text: &str) -> Result<SigningKey, FileFormatError> {
    Ok(SigningKey::from_bytes(&fixed::<32>(
        label,
        dearmor(label, text)?,
    )?))
}

/// Parses a host public key file.
pub fn parse_host_public(text: &str) -> Result<VerifyingKey, FileFormatError> {
    let bytes = fixed::<32>(labels::HOST_PUBLIC, dearmor(labels::HOST_PUBLIC, text)?)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| FileFormatError::Damaged(labels::HOST_PUBLIC))
}

/// Parses a host certificate file.
pub fn parse_certificate(text: &str) -> Result<HostCertificate, FileFormatError> {
    Ok(HostCertificate::from_bytes(&dearmor(
        labels::HOST_CERTIFICATE,
        text,
    )?)?)
}

/// What a host certificate lets the host activate (R21).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coverage {
    /// The certified key group.
    pub group: KeyGroup,
    /// The certified generation.
    pub generation: u8,
}

impl Coverage {
    /// R21: a host key activates the editions of its group and every group below it, of its
    /// generation and every earlier one.
    pub fn covers(&self, edition: &Edition) -> bool {
        edition.group <= self.group && edition.generation <= self.generation
    }
}

/// The authority public keys a client trusts: the root it was given (`authority.pub`) and the
/// roots handed trust since by verified rollover statements (X8, [`crate::rollover::Chain`]).
#[derive(Clone, Debug)]
pub struct TrustAnchor {
    /// The root first, then each successor in order.
    keys: Vec<AnchorKey>,
}

#[derive(Clone, Debug)]
struct AnchorKey {
    key: VerifyingKey,
    id: [u8; 8],
    /// After this instant the key is retired (its rollover statement's `old_root_until`).
    until: Option<Timestamp>,
}

impl TrustAnchor {
    /// Trusts this key.
    pub fn new(key: VerifyingKey) -> Self {
        Self {
            keys: vec![AnchorKey {
                id: authority_id(&key),
                key,
                until: None,
            }],
        }
    }

    /// The root key this anchor was made from (what `authority.pub` holds).
    pub fn key(&self) -> &VerifyingKey {
        &self.keys[0].key
    }

    /// The newest root: the one a rollover statement must be signed by.
    pub fn current(&self) -> &VerifyingKey {
        // `keys` is never empty: `new` puts the root in and nothing removes it.
        &self.keys[self.keys.len() - 1].key
    }

    /// Every key trusted at `now`, newest first (a retired root is left out).
    pub fn keys_at(&self, now: Timestamp) -> Vec<VerifyingKey> {
        self.keys
            .iter()
            .rev()
            .filter(|k| k.until.is_none_or(|until| now <= until))
            .map(|k| k.key)
            .collect()
    }

    /// The trusted key whose authority id is `id` (retired or not), if any: what verifies an
    /// object that names its signer, such as a revocation list (X7).
    pub fn key_by_id(&self, id: &[u8; 8]) -> Option<VerifyingKey> {
        self.keys.iter().find(|k| k.id == *id).map(|k| k.key)
    }

    /// The trusted root whose authority id is `id`, with its generation (0: the root of
    /// `authority.pub`, then one more per rollover) and when a rollover retired it (`None`:
    /// not retired). What checks a signed object that names its signer and carries its own
    /// time, such as a revocation list (X7, X8).
    pub fn root_by_id(&self, id: &[u8; 8]) -> Option<(u32, VerifyingKey, Option<Timestamp>)> {
        self.keys
            .iter()
            .enumerate()
            .find(|(_, k)| k.id == *id)
            .map(|(i, k)| (i as u32, k.key, k.until))
    }

    /// Whether `key` is one of the anchor's keys (retired or not).
    pub fn trusts_key(&self, key: &VerifyingKey) -> bool {
        self.keys.iter().any(|k| k.key == *key)
    }

    /// Verifies `signature` over `message` under a key trusted at `now`.
    pub fn verify_at(
        &self,
        message: &[u8],
        signature: &[u8; 64],
        now: Timestamp,
    ) -> Result<(), TrustError> {
        let sig = Signature::from_bytes(signature);
        self.keys_at(now)
            .iter()
            .any(|k| k.verify_strict(message, &sig).is_ok())
            .then_some(())
            .ok_or(TrustError::BadResponseSignature)
    }

    /// Adds a root handed trust by a verified rollover statement; the current newest root is
    /// retired after `old_until` if set. Only [`crate::rollover::Chain`] calls it.
    pub(crate) fn push_successor(&mut self, key: VerifyingKey, old_until: Option<Timestamp>) {
        let last = self.keys.len() - 1;
        self.keys[last].until = old_until;
        self.keys.push(AnchorKey {
            id: authority_id(&key),
            key,
            until: None,
        });
    }

    /// Verifies a host certificate at time `now`, under whichever trusted root issued it.
    pub fn verify_certificate(
        &self,
        cert: &HostCertificate,
        now: Timestamp,
    ) -> Result<VerifiedHost, TrustError> {
        let issuer = self
            .keys
            .iter()
            .find(|k| k.id == cert.body.authority_id)
            .ok_or(TrustError::UnknownAuthority)?;
        if let Some(until) = issuer.until
            && now > until
        {
            return Err(TrustError::RootRetired { until });
        }
        let sig = Signature::from_bytes(&cert.signature);
        issuer
            .key
            .verify_strict(&cert.body.signed_bytes(), &sig)
            .map_err(|_| TrustError::BadCertificateSignature)?;
        let from = Timestamp(cert.body.not_before.saturating_mul(1000));
        let until = Timestamp(cert.body.not_after.saturating_mul(1000));
        if now < from || now > until {
            return Err(TrustError::CertificateExpired { from, until });
        }
        let group = KeyGroup::from_rank(cert.body.key_group)
            .ok_or(TrustError::MalformedCertificate("key group"))?;
        let key = VerifyingKey::from_bytes(&cert.body.host_key)
            .map_err(|_| TrustError::MalformedCertificate("host key"))?;
        Ok(VerifiedHost {
            key,
            fingerprint: fingerprint(cert),
            coverage: Coverage {
                group,
                generation: cert.body.generation,
            },
        })
    }
}

/// A host certificate that verified under the trust anchor.
#[derive(Clone, Debug)]
pub struct VerifiedHost {
    key: VerifyingKey,
    fingerprint: [u8; 32],
    coverage: Coverage,
}

impl VerifiedHost {
    /// The certificate's fingerprint.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// What the host may activate.
    pub fn coverage(&self) -> Coverage {
        self.coverage
    }

    /// Verifies a compliance report signed by this host (R6).
    pub fn verify_report(&self, bytes: &[u8], signature: &[u8; 64]) -> Result<(), TrustError> {
        self.key
            .verify_strict(&report_message(bytes), &Signature::from_bytes(signature))
            .map_err(|_| TrustError::BadResponseSignature)
    }

    /// Verifies a response to the request whose frame hashed to `request_digest` and carried
    /// `nonce`, for `edition` (R16, R21). A successful count is accepted only from a host whose
    /// key group and generation cover the edition.
    pub fn verify_response(
        &self,
        response: &ActivationResponse,
        request_digest: &[u8; 32],
        nonce: &[u8; 16],
        edition: &Edition,
    ) -> Result<(), TrustError> {
        self.verify_signature(response, request_digest, nonce)?;
        // A signed refusal (e.g. `edition_not_covered`) carries no count, so it is genuine
        // whatever the host's coverage; a count is only trusted from a host that covers it.
        if response.result.is_success() && !self.coverage.covers(edition) {
            return Err(TrustError::GroupDoesNotCover {
                host_group: self.coverage.group,
                host_generation: self.coverage.generation,
                edition: edition.name.clone(),
            });
        }
        Ok(())
    }

    /// Checks that `response` answers the request with `request_digest` and `nonce` and was
    /// signed by this host (R16), whatever it says: a signed time (X5) needs no coverage.
    pub fn verify_signature(
        &self,
        response: &ActivationResponse,
        request_digest: &[u8; 32],
        nonce: &[u8; 16],
    ) -> Result<(), TrustError> {
        // The nonce first: a replayed response is named as such, not as a bad signature.
        if &response.nonce != nonce {
            return Err(TrustError::NonceMismatch);
        }
        if response.host_fingerprint != self.fingerprint {
            return Err(TrustError::FingerprintMismatch);
        }
        let sig = Signature::from_bytes(&response.signature);
        self.key
            .verify_strict(&response.signed_bytes(request_digest), &sig)
            .map_err(|_| TrustError::BadResponseSignature)?;
        Ok(())
    }
}

/// A host's signing key with its certificate.
#[derive(Clone)]
pub struct HostIdentity {
    key: SigningKey,
    certificate: HostCertificate,
    fingerprint: [u8; 32],
    coverage: Coverage,
}

impl fmt::Debug for HostIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostIdentity")
            .field("fingerprint", &to_hex(&self.fingerprint))
            .field("coverage", &self.coverage)
            .finish_non_exhaustive()
    }
}

/// Why a host key and certificate do not belong together.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityError {
    /// The certificate certifies another key.
    #[error("the certificate was issued for a different host key")]
    KeyMismatch,
    /// The certificate's group is out of range.
    #[error("the certificate's key group is invalid")]
    BadGroup,
}

impl HostIdentity {
    /// Pairs a host's secret key with its certificate.
    pub fn new(key: SigningKey, certificate: HostCertificate) -> Result<Self, IdentityError> {
        if key.verifying_key().as_bytes() != &certificate.body.host_key {
            return Err(IdentityError::KeyMismatch);
        }
        let group =
            KeyGroup::from_rank(certificate.body.key_group).ok_or(IdentityError::BadGroup)?;
        Ok(Self {
            coverage: Coverage {
                group,
                generation: certificate.body.generation,
            },
            fingerprint: fingerprint(&certificate),
            key,
            certificate,
        })
    }

    /// The certificate.
    pub fn certificate(&self) -> &HostCertificate {
        &self.certificate
    }

    /// The certificate's fingerprint.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// What the host may activate.
    pub fn coverage(&self) -> Coverage {
        self.coverage
    }

    /// Signs a compliance report's bytes (R6).
    pub fn sign_report(&self, bytes: &[u8]) -> [u8; 64] {
        self.key.sign(&report_message(bytes)).to_bytes()
    }

    /// Signs a response to the request that hashed to `request_digest`.
    pub fn sign(&self, response: &mut ActivationResponse, request_digest: &[u8; 32]) {
        response.host_fingerprint = self.fingerprint;
        response.signature = self
            .key
            .sign(&response.signed_bytes(request_digest))
            .to_bytes();
    }
}

/// What a MAK activation proof covers (R25): the key's serial, the client, its edition, its
/// hardware id and the issue day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MakClaim {
    /// The MAK's serial.
    pub serial: u32,
    /// The client's CMID.
    pub cmid: [u8; 16],
    /// The edition.
    pub sku: [u8; 16],
    /// The client's hardware id.
    pub hardware: [u8; 5],
    /// Days since 1970 when the authority activated it.
    pub day: u16,
}

impl MakClaim {
    /// Domain separator of the authority's signature.
    pub const SIGNING_CONTEXT: &'static [u8] = b"tally/v1/mak-activation\0";

    /// The signed bytes.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut m = Self::SIGNING_CONTEXT.to_vec();
        m.extend_from_slice(&self.serial.to_be_bytes());
        m.extend_from_slice(&self.cmid);
        m.extend_from_slice(&self.sku);
        m.extend_from_slice(&self.hardware);
        m.extend_from_slice(&self.day.to_be_bytes());
        m
    }

    /// Verifies the authority's signature on this claim under any root trusted on the claim's
    /// day (X8: a claim by a root retired before that day is refused).
    pub fn verify(&self, anchor: &TrustAnchor, signature: &[u8; 64]) -> Result<(), TrustError> {
        let day = Timestamp(i64::from(self.day) * crate::time::DAY_MS);
        anchor.verify_at(&self.signed_bytes(), signature, day)
    }
}

fn report_message(bytes: &[u8]) -> Vec<u8> {
    let mut m = b"tally/v1/report\0".to_vec();
    m.extend_from_slice(bytes);
    m
}

/// Signs a certificate body with an authority key.
pub fn sign_certificate(authority: &SigningKey, body: CertificateBody) -> HostCertificate {
    let signature = authority.sign(&body.signed_bytes()).to_bytes();
    HostCertificate { body, signature }
}

/// A fresh random Ed25519 key.
pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut rand::rng())
}
