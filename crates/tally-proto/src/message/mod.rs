//! The messages and their encodings. Field order on the wire is the declaration order of each
//! type's fields; all integers are big-endian. Sizes are fixed except the machine name, so the
//! largest message of each kind is known and tested to fit in [`MAX_FRAME`].
//!
//! [`Message`] (the frame: kind byte, encoding, decoding) is here; the activation exchange's
//! types are in `activation`, the host certificate in `certificate` (both re-exported here),
//! and the tests in `tests`.

use uuid::Uuid;

use crate::codec::{DecodeError, Frame, Reader};
use crate::document::{DocumentChunk, DocumentRequest};
use crate::{HEADER_LEN, MAX_FRAME, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, ResultCode};

mod activation;
mod certificate;

pub use activation::{
    ActivationRequest, ActivationResponse, LicenseState, MachineName, RequestExt,
};
pub use certificate::{CertificateBody, HostCertificate};

/// The kind byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageKind {
    /// Client → host: count me (R2).
    ActivationRequest = 0x01,
    /// Host → client: the signed count (R16).
    ActivationResponse = 0x02,
    /// Client → host: send me your certificate.
    CertificateRequest = 0x03,
    /// Host → client: the authority-signed host certificate.
    CertificateResponse = 0x04,
    /// Host → client: a request could not be read; the host closes the connection.
    Error = 0x05,
    /// Client → host, version 2: send me a piece of a document (X7).
    DocumentRequest = 0x06,
    /// Host → client, version 2: a piece of a document.
    DocumentChunk = 0x07,
}

impl MessageKind {
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            0x01 => Self::ActivationRequest,
            0x02 => Self::ActivationResponse,
            0x03 => Self::CertificateRequest,
            0x04 => Self::CertificateResponse,
            0x05 => Self::Error,
            0x06 => Self::DocumentRequest,
            0x07 => Self::DocumentChunk,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

/// Host → client: why a frame could not be answered. Unsigned: it grants nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMessage {
    /// The reason.
    pub result: ResultCode,
}

/// Any message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// See [`ActivationRequest`].
    ActivationRequest(ActivationRequest),
    /// See [`ActivationResponse`].
    ActivationResponse(ActivationResponse),
    /// Asks for the host certificate.
    CertificateRequest,
    /// See [`HostCertificate`].
    CertificateResponse(HostCertificate),
    /// See [`ErrorMessage`].
    Error(ErrorMessage),
    /// See [`DocumentRequest`] (version 2).
    DocumentRequest(DocumentRequest),
    /// See [`DocumentChunk`] (version 2).
    DocumentChunk(DocumentChunk),
}

impl Message {
    /// The message's kind byte.
    pub fn kind(&self) -> MessageKind {
        match self {
            Self::ActivationRequest(_) => MessageKind::ActivationRequest,
            Self::ActivationResponse(_) => MessageKind::ActivationResponse,
            Self::CertificateRequest => MessageKind::CertificateRequest,
            Self::CertificateResponse(_) => MessageKind::CertificateResponse,
            Self::Error(_) => MessageKind::Error,
            Self::DocumentRequest(_) => MessageKind::DocumentRequest,
            Self::DocumentChunk(_) => MessageKind::DocumentChunk,
        }
    }

    /// The version this message is encoded in by [`Message::encode`]: an activation request
    /// or response is version 2 when it carries version 2's fields; every other kind is the
    /// newest version (use [`Message::encode_as`] to answer an older peer).
    pub fn version(&self) -> u8 {
        match self {
            Self::ActivationRequest(r) => {
                if r.ext.is_some() {
                    2
                } else {
                    1
                }
            }
            Self::ActivationResponse(r) => r.version(),
            _ => PROTOCOL_VERSION,
        }
    }

    /// Encodes the message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(self.version())
    }

    /// Encodes the message as one frame of `version` (clamped to the versions this crate
    /// speaks). Activation requests and responses always use their own [`Message::version`]:
    /// their fields decide it. A host answers a certificate request or an undecodable frame in
    /// the version the peer spoke.
    pub fn encode_as(&self, version: u8) -> Vec<u8> {
        let version = match self {
            Self::ActivationRequest(_) | Self::ActivationResponse(_) => self.version(),
            // Documents exist from version 2 on.
            Self::DocumentRequest(_) | Self::DocumentChunk(_) => PROTOCOL_VERSION,
            _ => version.clamp(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
        };
        let mut out = Vec::with_capacity(MAX_FRAME);
        out.extend_from_slice(&[0, 0, version, self.kind() as u8]);
        match self {
            Self::ActivationRequest(r) => {
                out.extend_from_slice(&r.nonce);
                out.extend_from_slice(r.cmid.as_bytes());
                out.extend_from_slice(r.pool.as_bytes());
                out.extend_from_slice(r.sku.as_bytes());
                out.extend_from_slice(&r.threshold.to_be_bytes());
                out.push(r.license_state as u8);
                out.extend_from_slice(&r.grace_remaining_minutes.to_be_bytes());
                out.extend_from_slice(&r.client_time.to_be_bytes());
                if let Some(ext) = &r.ext {
                    out.extend_from_slice(&ext.sequence.to_be_bytes());
                    out.extend_from_slice(&ext.hardware_digest);
                }
                let name = r.machine_name.as_str().as_bytes();
                // MachineName guarantees len <= 100, so this fits in a u8.
                out.push(name.len() as u8);
                out.extend_from_slice(name);
            }
            Self::ActivationResponse(r) => {
                r.encode_unsigned(&mut out);
                out.extend_from_slice(&r.signature);
            }
            Self::CertificateRequest => {}
            Self::CertificateResponse(c) => out.extend_from_slice(&c.to_bytes()),
            Self::Error(e) => out.extend_from_slice(&e.result.0.to_be_bytes()),
            Self::DocumentRequest(d) => d.encode(&mut out),
            Self::DocumentChunk(d) => d.encode(&mut out),
        }
        // Every message type is bounded well below MAX_FRAME (see the size tests), so the
        // length always fits the u16 prefix.
        let len = (out.len() - 2) as u16;
        out[..2].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// Decodes exactly one frame (as delimited by [`Frame::check`]).
    pub fn decode(frame: &[u8]) -> Result<Self, DecodeError> {
        let total = match Frame::check(frame)? {
            Some(total) => total,
            None => return Err(DecodeError::Truncated("frame header")),
        };
        if total != frame.len() {
            return Err(if total < frame.len() {
                DecodeError::TrailingData(frame.len() - total)
            } else {
                DecodeError::Truncated("frame")
            });
        }
        let version = frame[2];
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let kind = MessageKind::from_u8(frame[3])?;
        let mut r = Reader::new(&frame[HEADER_LEN..]);
        let msg = match kind {
            MessageKind::ActivationRequest => {
                let nonce = r.array("nonce")?;
                let cmid = Uuid::from_bytes(r.array("cmid")?);
                let pool = Uuid::from_bytes(r.array("pool")?);
                let sku = Uuid::from_bytes(r.array("sku")?);
                let threshold = r.u16("threshold")?;
                let license_state = LicenseState::from_u8(r.u8("license_state")?)?;
                let grace_remaining_minutes = r.u32("grace_remaining")?;
                let client_time = r.i64("client_time")?;
                let ext = if version >= 2 {
                    Some(RequestExt {
                        sequence: r.u32("sequence")?,
                        hardware_digest: r.array("hardware_digest")?,
                    })
                } else {
                    None
                };
                let name_len = usize::from(r.u8("machine_name length")?);
                let raw = r.take(name_len, "machine_name")?;
                let name = std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidField {
                    field: "machine_name",
                    reason: "not UTF-8",
                })?;
                Self::ActivationRequest(ActivationRequest {
                    nonce,
                    cmid,
                    pool,
                    sku,
                    threshold,
                    license_state,
                    grace_remaining_minutes,
                    client_time,
                    ext,
                    machine_name: MachineName::new(name)?,
                })
            }
            MessageKind::ActivationResponse => Self::ActivationResponse(ActivationResponse {
                nonce: r.array("nonce")?,
                host_fingerprint: r.array("host_fingerprint")?,
                result: ResultCode(r.u32("result")?),
                count: r.u32("count")?,
                activation_interval_secs: r.u32("activation_interval")?,
                renewal_interval_secs: r.u32("renewal_interval")?,
                host_time: r.i64("host_time")?,
                revocation_serial: if version >= 2 {
                    Some(r.u32("revocation_serial")?)
                } else {
                    None
                },
                signature: r.array("signature")?,
            }),
            MessageKind::CertificateRequest => Self::CertificateRequest,
            MessageKind::CertificateResponse => {
                Self::CertificateResponse(HostCertificate::read(&mut r)?)
            }
            MessageKind::Error => Self::Error(ErrorMessage {
                result: ResultCode(r.u32("result")?),
            }),
            MessageKind::DocumentRequest | MessageKind::DocumentChunk if version < 2 => {
                return Err(DecodeError::InvalidField {
                    field: "kind",
                    reason: "documents need protocol version 2",
                });
            }
            MessageKind::DocumentRequest => Self::DocumentRequest(DocumentRequest::read(&mut r)?),
            MessageKind::DocumentChunk => Self::DocumentChunk(DocumentChunk::read(&mut r)?),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests;
