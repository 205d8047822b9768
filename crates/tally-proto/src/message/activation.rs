//! The activation exchange's types: the request a client sends (R2), the signed response a
//! host returns (R16), and the fields they carry (license state, machine name, version 2's
//! installation fields).

use uuid::Uuid;

use crate::ResultCode;
use crate::codec::DecodeError;

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
    pub(super) fn from_u8(v: u8) -> Result<Self, DecodeError> {
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

    pub(super) fn encode_unsigned(&self, out: &mut Vec<u8>) {
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
