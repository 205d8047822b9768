//! The messages and their encodings. Field order on the wire is the declaration order below;
//! all integers are big-endian. Sizes are fixed except the machine name, so the largest
//! message of each kind is known and tested to fit in [`MAX_FRAME`].

use uuid::Uuid;

use crate::codec::{DecodeError, Frame, Reader};
use crate::document::{DocumentChunk, DocumentRequest};
use crate::{HEADER_LEN, MAX_FRAME, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, ResultCode};

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

/// The client's licensing state as it reports it (informational for the host's registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum LicenseState {
    /// No key installed.
    Unlicensed = 0,
    /// Within the initial (or rearmed) grace period (R10).
    InitialGrace = 1,
    /// Activated and within validity (R7).
    Licensed = 2,
    /// Grace or validity ran out (R10).
    Notification = 3,
    /// A hardware change needs reactivation (R12).
    OutOfTolerance = 4,
}

impl LicenseState {
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            0 => Self::Unlicensed,
            1 => Self::InitialGrace,
            2 => Self::Licensed,
            3 => Self::Notification,
            4 => Self::OutOfTolerance,
            _ => {
                return Err(DecodeError::InvalidField {
                    field: "license_state",
                    reason: "unknown state",
                });
            }
        })
    }
}

/// A machine name: UTF-8, 1 to [`MachineName::MAX_LEN`] bytes, no control characters.
/// Untrusted input is only ever held in this type once checked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MachineName(String);

impl MachineName {
    /// Longest name in bytes.
    pub const MAX_LEN: usize = 100;

    /// Validates a name.
    pub fn new(name: &str) -> Result<Self, DecodeError> {
        let invalid = |reason| DecodeError::InvalidField {
            field: "machine_name",
            reason,
        };
        if name.is_empty() {
            return Err(invalid("empty"));
        }
        if name.len() > Self::MAX_LEN {
            return Err(invalid("longer than 100 bytes"));
        }
        if name.chars().any(char::is_control) {
            return Err(invalid("contains a control character"));
        }
        Ok(Self(name.to_owned()))
    }

    /// Makes a valid name from any local string: control characters become `?` and the name
    /// is cut at a character boundary to fit. An empty input becomes `unknown`.
    pub fn lossy(name: &str) -> Self {
        let mut out = String::new();
        for c in name.chars().map(|c| if c.is_control() { '?' } else { c }) {
            if out.len() + c.len_utf8() > Self::MAX_LEN {
                break;
            }
            out.push(c);
        }
        if out.is_empty() {
            out.push_str("unknown");
        }
        Self(out)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Client → host: an activation or renewal request (R2, R15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivationRequest {
    /// Fresh random value; the response must echo it (R16).
    pub nonce: [u8; 16],
    /// Client machine id (random 128-bit id made at install time).
    pub cmid: Uuid,
    /// The pool the edition belongs to.
    pub pool: Uuid,
    /// The edition (SKU) id.
    pub sku: Uuid,
    /// The activation threshold the client applies (R1).
    pub threshold: u16,
    /// The client's license state.
    pub license_state: LicenseState,
    /// Remaining grace or validity, in minutes.
    pub grace_remaining_minutes: u32,
    /// The client's clock, Unix milliseconds.
    pub client_time: i64,
    /// Version 2's fields (X6); `None` is a version-1 request.
    pub ext: Option<RequestExt>,
    /// The requesting machine's name (R27).
    pub machine_name: MachineName,
}

/// What a version-2 request adds (X6: one CMID is one installation). On the wire between
/// `client_time` and the machine name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestExt {
    /// The installation's request counter: saved by the client before each request is sent,
    /// so one installation never sends a number twice. Two installations that present one CMID
    /// (a copied disk image) send the same numbers: the host sees a number again.
    pub sequence: u32,
    /// First 8 bytes of SHA-256 over the client's hardware fingerprint (R12), so the host can
    /// tell copies on different hardware apart in its reports.
    pub hardware_digest: [u8; 8],
}

/// Host → client: the signed answer to one [`ActivationRequest`] (R2, R9, R16).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivationResponse {
    /// The request's nonce, echoed.
    pub nonce: [u8; 16],
    /// SHA-256 of the host certificate whose key signed this response.
    pub host_fingerprint: [u8; 32],
    /// Success, or why no count was given.
    pub result: ResultCode,
    /// The pool's count, requester included (0 when `result` is an error).
    pub count: u32,
    /// Seconds between retries after a failure (R8, R9).
    pub activation_interval_secs: u32,
    /// Seconds between renewals (R8, R9).
    pub renewal_interval_secs: u32,
    /// The host's clock, Unix milliseconds: the client's trusted time (X5).
    pub host_time: i64,
    /// Version 2: the newest revocation list serial the host holds (X7; 0 when it holds
    /// none), so a client learns that a newer list exists. `None` is a version-1 response.
    pub revocation_serial: Option<u32>,
    /// Ed25519 signature, see `docs/PROTOCOL.md` "Signatures".
    pub signature: [u8; 64],
}

impl ActivationResponse {
    /// Domain separator for a version-1 response signature.
    pub const SIGNING_CONTEXT: &'static [u8] = b"tally/v1/activation-response\0";
    /// Domain separator for a version-2 response signature.
    pub const SIGNING_CONTEXT_V2: &'static [u8] = b"tally/v2/activation-response\0";

    /// The protocol version this response is encoded in.
    pub fn version(&self) -> u8 {
        if self.revocation_serial.is_some() {
            2
        } else {
            1
        }
    }

    /// Bytes covered by the signature: the version's context, SHA-256 of the request frame,
    /// then every field before the signature as encoded on the wire.
    pub fn signed_bytes(&self, request_digest: &[u8; 32]) -> Vec<u8> {
        let context = match self.version() {
            1 => Self::SIGNING_CONTEXT,
            _ => Self::SIGNING_CONTEXT_V2,
        };
        let mut out = Vec::with_capacity(context.len() + 32 + 76);
        out.extend_from_slice(context);
        out.extend_from_slice(request_digest);
        self.encode_unsigned(&mut out);
        out
    }

    fn encode_unsigned(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.host_fingerprint);
        out.extend_from_slice(&self.result.0.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.activation_interval_secs.to_be_bytes());
        out.extend_from_slice(&self.renewal_interval_secs.to_be_bytes());
        out.extend_from_slice(&self.host_time.to_be_bytes());
        if let Some(serial) = self.revocation_serial {
            out.extend_from_slice(&serial.to_be_bytes());
        }
    }
}

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

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            body: CertificateBody::read(r)?,
            signature: r.array("certificate signature")?,
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
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::FrameError;

    fn largest_request() -> ActivationRequest {
        ActivationRequest {
            nonce: [0xFF; 16],
            cmid: Uuid::from_bytes([0xFF; 16]),
            pool: Uuid::from_bytes([0xFF; 16]),
            sku: Uuid::from_bytes([0xFF; 16]),
            threshold: u16::MAX,
            license_state: LicenseState::OutOfTolerance,
            grace_remaining_minutes: u32::MAX,
            client_time: i64::MAX,
            ext: Some(RequestExt {
                sequence: u32::MAX,
                hardware_digest: [0xFF; 8],
            }),
            // 25 four-byte characters: 100 bytes, the longest a name can be.
            machine_name: MachineName::new(&"🦀".repeat(25)).expect("100 bytes is allowed"),
        }
    }

    fn response() -> ActivationResponse {
        ActivationResponse {
            nonce: [7; 16],
            host_fingerprint: [9; 32],
            result: ResultCode::SUCCESS,
            count: u32::MAX,
            activation_interval_secs: 7200,
            renewal_interval_secs: 604_800,
            host_time: 1_700_000_000_000,
            revocation_serial: Some(u32::MAX),
            signature: [3; 64],
        }
    }

    fn certificate() -> HostCertificate {
        HostCertificate {
            body: CertificateBody {
                host_key: [1; 32],
                key_group: 3,
                generation: 2,
                key_serial: 77,
                not_before: 10,
                not_after: 20,
                authority_id: [5; 8],
            },
            signature: [8; 64],
        }
    }

    // R15: every request and response is at most 250 bytes.
    #[test]
    fn r15_largest_messages_fit_in_250_bytes() {
        let req = Message::ActivationRequest(largest_request()).encode();
        let resp = Message::ActivationResponse(response()).encode();
        let cert = Message::CertificateResponse(certificate()).encode();
        let err = Message::Error(ErrorMessage {
            result: ResultCode(u32::MAX),
        })
        .encode();
        let doc_req = Message::DocumentRequest(DocumentRequest {
            doc: crate::DocumentKind::RootRollover,
            offset: u32::MAX,
        })
        .encode();
        let chunk = Message::DocumentChunk(DocumentChunk::of(
            crate::DocumentKind::RevocationList,
            u32::MAX,
            &[0xAB; 1000],
            0,
        ))
        .encode();
        for (name, bytes) in [
            ("request", &req),
            ("response", &resp),
            ("certificate", &cert),
            ("error", &err),
            ("document request", &doc_req),
            ("document chunk", &chunk),
        ] {
            assert!(bytes.len() <= MAX_FRAME, "{name} is {} bytes", bytes.len());
        }
        assert_eq!(req.len(), 4 + 80 + 12 + 100);
        assert_eq!(resp.len(), 4 + 140);
        assert_eq!(chunk.len(), 4 + 14 + 224);
        // X7: documents round-trip, and exist only from version 2 on.
        assert!(
            matches!(Message::decode(&chunk), Ok(Message::DocumentChunk(c)) if c.data.len() == 224)
        );
        let mut v1 = doc_req.clone();
        v1[2] = 1;
        assert!(Message::decode(&v1).is_err());
    }

    // R15 + X6: a version-1 request still decodes (as a request without version 2's fields),
    // and the version-1 response answering it keeps the version-1 layout and signing context.
    #[test]
    fn version_1_frames_decode_and_answer_in_version_1() {
        let mut v1 = largest_request();
        v1.ext = None;
        let bytes = Message::ActivationRequest(v1.clone()).encode();
        assert_eq!(bytes[2], 1);
        assert_eq!(bytes.len(), 4 + 80 + 100);
        assert_eq!(Message::decode(&bytes), Ok(Message::ActivationRequest(v1)));
        let mut resp = response();
        resp.revocation_serial = None;
        let bytes = Message::ActivationResponse(resp.clone()).encode();
        assert_eq!((bytes[2], bytes.len()), (1, 4 + 136));
        assert!(
            resp.signed_bytes(&[0; 32])
                .starts_with(ActivationResponse::SIGNING_CONTEXT)
        );
        assert!(
            response()
                .signed_bytes(&[0; 32])
                .starts_with(ActivationResponse::SIGNING_CONTEXT_V2)
        );
        let err = Message::Error(ErrorMessage {
            result: ResultCode::HOST_BUSY,
        });
        assert_eq!(err.encode_as(1)[2], 1);
        assert_eq!(err.encode()[2], PROTOCOL_VERSION);
        assert_eq!(Message::decode(&err.encode_as(1)), Ok(err));
    }

    #[test]
    fn r15_round_trip_each_kind() {
        for msg in [
            Message::ActivationRequest(largest_request()),
            Message::ActivationResponse(response()),
            Message::CertificateRequest,
            Message::CertificateResponse(certificate()),
            Message::Error(ErrorMessage {
                result: ResultCode::HOST_BUSY,
            }),
        ] {
            let bytes = msg.encode();
            assert_eq!(Frame::check(&bytes), Ok(Some(bytes.len())));
            assert_eq!(Message::decode(&bytes), Ok(msg));
        }
    }

    #[test]
    fn r15_oversized_length_prefix_is_refused_before_reading() {
        assert_eq!(Frame::check(&[0x00, 0xF9]), Err(FrameError::TooLarge(251)));
        assert_eq!(
            Frame::check(&[0xFF, 0xFF]),
            Err(FrameError::TooLarge(65537))
        );
        assert_eq!(Frame::check(&[0x00, 0xF8]), Ok(None));
        assert_eq!(Frame::check(&[0x00, 0x01, 0]), Err(FrameError::TooShort(3)));
        assert_eq!(Frame::check(&[0x00]), Ok(None));
    }

    #[test]
    fn each_undecodable_input_gets_its_documented_code() {
        // docs/PROTOCOL.md "Which Error code": only a length over 248 is frame_too_large.
        let code = |bytes: &[u8]| match Frame::check(bytes) {
            Err(e) => e.result_code(),
            Ok(_) => Message::decode(bytes)
                .err()
                .map_or(ResultCode::SUCCESS, |e| e.result_code()),
        };
        assert_eq!(code(&[0x00, 0x00]), ResultCode::MALFORMED_REQUEST);
        assert_eq!(code(&[0x00, 0x01, 0x01]), ResultCode::MALFORMED_REQUEST);
        assert_eq!(code(&[0x00, 0xF9]), ResultCode::FRAME_TOO_LARGE);
        assert_eq!(code(&[0xFF, 0xFF]), ResultCode::FRAME_TOO_LARGE);
        assert_eq!(
            code(&[0x00, 0x02, 0x03, 0x03]),
            ResultCode::UNSUPPORTED_VERSION
        );
        assert_eq!(
            code(&[0x00, 0x02, 0x00, 0x03]),
            ResultCode::UNSUPPORTED_VERSION
        );
        assert_eq!(
            code(&[0x00, 0x02, 0x01, 0x42]),
            ResultCode::MALFORMED_REQUEST
        );
        assert_eq!(
            code(&[0x00, 0x03, 0x01, 0x03, 0x00]),
            ResultCode::MALFORMED_REQUEST
        );
        assert_eq!(
            code(&[0x00, 0x02, 0x01, 0x01]),
            ResultCode::MALFORMED_REQUEST
        );
        assert_eq!(code(&[0x00, 0x02, 0x01, 0x03]), ResultCode::SUCCESS);
    }

    #[test]
    fn trailing_bytes_and_bad_fields_are_rejected() {
        let mut bytes = Message::Error(ErrorMessage {
            result: ResultCode::HOST_BUSY,
        })
        .encode();
        bytes.push(0);
        bytes[1] += 1;
        assert_eq!(Message::decode(&bytes), Err(DecodeError::TrailingData(1)));

        let mut bytes = Message::CertificateRequest.encode();
        bytes[2] = 9;
        assert_eq!(
            Message::decode(&bytes),
            Err(DecodeError::UnsupportedVersion(9))
        );
        bytes[2] = PROTOCOL_VERSION;
        bytes[3] = 0x42;
        assert_eq!(Message::decode(&bytes), Err(DecodeError::UnknownKind(0x42)));

        assert!(MachineName::new("a\nb").is_err());
        assert!(MachineName::new("").is_err());
        assert!(MachineName::new(&"x".repeat(101)).is_err());
        assert_eq!(MachineName::lossy(&"é".repeat(80)).as_str().len(), 100);
        assert_eq!(MachineName::lossy("a\tb").as_str(), "a?b");
    }

    proptest! {
        // Decoding arbitrary bytes never panics, and whatever decodes round-trips exactly.
        #[test]
        fn decode_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            crate::fuzzing::fuzz_message(&data);
        }

        // Structured inputs: valid headers with random bodies reach the field decoders.
        #[test]
        fn decode_random_bodies(kind in 1u8..=6, body in proptest::collection::vec(any::<u8>(), 0..246)) {
            let mut frame = ((body.len() + 2) as u16).to_be_bytes().to_vec();
            frame.extend_from_slice(&[PROTOCOL_VERSION, kind]);
            frame.extend_from_slice(&body);
            crate::fuzzing::fuzz_message(&frame);
        }

        #[test]
        fn request_round_trip(nonce in any::<[u8; 16]>(), cmid in any::<[u8; 16]>(), threshold in any::<u16>(),
                              grace in any::<u32>(), time in any::<i64>(), name in "[a-zA-Z0-9.-]{1,100}") {
            let msg = Message::ActivationRequest(ActivationRequest {
                nonce, cmid: Uuid::from_bytes(cmid), pool: Uuid::from_bytes(nonce), sku: Uuid::nil(),
                threshold, license_state: LicenseState::InitialGrace, grace_remaining_minutes: grace,
                client_time: time, ext: Some(RequestExt { sequence: grace, hardware_digest: [1; 8] }), machine_name: MachineName::new(&name).expect("generated names are valid"),
            });
            prop_assert_eq!(Message::decode(&msg.encode()), Ok(msg));
        }
    }
}
