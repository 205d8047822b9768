//! Result codes carried in responses (R14). The full table, with client-side codes, is in
//! `docs/PROTOCOL.md`; the numeric values are stable and never reused.

use std::fmt;

/// A 32-bit result code. `0` is success; errors have the high bit set (`0xC7A1_xxxx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResultCode(pub u32);

impl ResultCode {
    /// The request was valid; the response carries the pool's count.
    pub const SUCCESS: Self = Self(0);
    /// The request could not be decoded.
    pub const MALFORMED_REQUEST: Self = Self(0xC7A1_0001);
    /// The request used a protocol version the host does not speak.
    pub const UNSUPPORTED_VERSION: Self = Self(0xC7A1_0002);
    /// The edition is not in the host's catalog.
    pub const UNKNOWN_EDITION: Self = Self(0xC7A1_0003);
    /// The host's key group or generation does not cover the edition (R21).
    pub const EDITION_NOT_COVERED: Self = Self(0xC7A1_0004);
    /// The edition belongs to another pool than the request says.
    pub const POOL_MISMATCH: Self = Self(0xC7A1_0005);
    /// The host has no room for another connection.
    pub const HOST_BUSY: Self = Self(0xC7A1_0006);
    /// The host could not store the request durably; nothing was counted.
    pub const STORAGE_FAILURE: Self = Self(0xC7A1_0007);
    /// The frame exceeded the 250-byte limit.
    pub const FRAME_TOO_LARGE: Self = Self(0xC7A1_0008);
    /// Version 2 (X6): another installation presents this CMID (the request's sequence was
    /// seen before); nothing was counted. The client takes a new CMID and asks again.
    pub const CLONE_DETECTED: Self = Self(0xC7A1_0009);
    /// Version 2 (X7): this host's certificate is on the authority's revocation list the host
    /// holds; it answers no activation. The client asks another host (R19).
    pub const HOST_REVOKED: Self = Self(0xC7A1_000A);

    /// Whether this is the success code.
    pub fn is_success(self) -> bool {
        self == Self::SUCCESS
    }

    /// A short, stable, snake_case name for logs and JSON, or `None` for codes this build does
    /// not know.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::SUCCESS => "success",
            Self::MALFORMED_REQUEST => "malformed_request",
            Self::UNSUPPORTED_VERSION => "unsupported_version",
            Self::UNKNOWN_EDITION => "unknown_edition",
            Self::EDITION_NOT_COVERED => "edition_not_covered",
            Self::POOL_MISMATCH => "pool_mismatch",
            Self::HOST_BUSY => "host_busy",
            Self::STORAGE_FAILURE => "storage_failure",
            Self::FRAME_TOO_LARGE => "frame_too_large",
            Self::CLONE_DETECTED => "clone_detected",
            Self::HOST_REVOKED => "host_revoked",
            _ => return None,
        })
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "0x{:08X} ({name})", self.0),
            None => write!(f, "0x{:08X}", self.0),
        }
    }
}
