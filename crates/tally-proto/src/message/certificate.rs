//! The host certificate: a host's public key certified by the authority (R16, R21), and its
//! canonical encoding.

use crate::codec::{DecodeError, Reader};

/// The certified part of a host certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateBody {
    /// The host's Ed25519 public key.
    pub host_key: [u8; 32],
    /// Key group rank (0 Client VL … 3 Server C, R21).
    pub key_group: u8,
    /// Highest product generation the host may serve (R21).
    pub generation: u8,
    /// Serial of the host key the certificate was issued for.
    pub key_serial: u32,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// First 8 bytes of SHA-256 of the authority's public key.
    pub authority_id: [u8; 8],
}

impl CertificateBody {
    /// Domain separator for the certificate signature.
    pub const SIGNING_CONTEXT: &'static [u8] = b"tally/v1/host-certificate\0";

    /// Bytes covered by the authority's signature.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIGNING_CONTEXT.len() + 62);
        out.extend_from_slice(Self::SIGNING_CONTEXT);
        self.encode(&mut out);
        out
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.host_key);
        out.push(self.key_group);
        out.push(self.generation);
        out.extend_from_slice(&self.key_serial.to_be_bytes());
        out.extend_from_slice(&self.not_before.to_be_bytes());
        out.extend_from_slice(&self.not_after.to_be_bytes());
        out.extend_from_slice(&self.authority_id);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            host_key: r.array("host_key")?,
            key_group: r.u8("key_group")?,
            generation: r.u8("generation")?,
            key_serial: r.u32("key_serial")?,
            not_before: r.i64("not_before")?,
            not_after: r.i64("not_after")?,
            authority_id: r.array("authority_id")?,
        })
    }
}

/// A host's public key certified by the authority for a key group (R16, R21).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCertificate {
    /// What the authority certified.
    pub body: CertificateBody,
    /// The authority's Ed25519 signature over [`CertificateBody::signed_bytes`].
    pub signature: [u8; 64],
}

impl HostCertificate {
    /// The certificate's canonical encoding (also what its fingerprint hashes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(126);
        self.body.encode(&mut out);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes [`HostCertificate::to_bytes`] output; rejects trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let cert = Self::read(&mut r)?;
        r.finish()?;
        Ok(cert)
    }

    pub(super) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            body: CertificateBody::read(r)?,
            signature: r.array("certificate signature")?,
        })
    }
}
