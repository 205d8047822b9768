//! Frame check and the bounded reader/writer used by every message.
//!
//! As in mini-redis, a caller first asks [`Frame::check`] whether a whole frame is buffered (no
//! allocation, an incomplete frame is `Ok(None)`), and only then decodes it.

use thiserror::Error;

use crate::{HEADER_LEN, MAX_FRAME, ResultCode};

/// Why a buffer cannot hold a frame.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes exceeds the {max} byte limit", max = MAX_FRAME)]
    TooLarge(usize),
    /// The length prefix is too small to hold a header.
    #[error("frame of {0} bytes is shorter than a header")]
    TooShort(usize),
}

impl FrameError {
    /// The code a host answers in its `Error` frame (docs/PROTOCOL.md "Framing"): only a
    /// length over the limit is `frame_too_large`; a length too short for a header (0 or 1) is
    /// `malformed_request`.
    pub fn result_code(&self) -> ResultCode {
        match self {
            Self::TooLarge(_) => ResultCode::FRAME_TOO_LARGE,
            Self::TooShort(_) => ResultCode::MALFORMED_REQUEST,
        }
    }
}

/// Why a frame is not a valid message.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame itself is malformed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The frame ended before a field did.
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    /// Bytes remained after the last field.
    #[error("{0} trailing bytes after message")]
    TrailingData(usize),
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The kind byte names no message.
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    /// A field holds a value outside its range.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl DecodeError {
    /// The code a host answers in its `Error` frame for an undecodable request: the version
    /// byte's mismatch is `unsupported_version`, the length prefix as [`FrameError::result_code`],
    /// everything else `malformed_request`.
    pub fn result_code(&self) -> ResultCode {
        match self {
            Self::Frame(f) => f.result_code(),
            Self::UnsupportedVersion(_) => ResultCode::UNSUPPORTED_VERSION,
            Self::Truncated(_)
            | Self::TrailingData(_)
            | Self::UnknownKind(_)
            | Self::InvalidField { .. } => ResultCode::MALFORMED_REQUEST,
        }
    }
}

/// Helpers for a complete frame in a buffer.
pub struct Frame;

impl Frame {
    /// Checks whether `buf` starts with a whole frame.
    ///
    /// Returns `Ok(Some(n))` with the frame's total length, `Ok(None)` when more bytes are
    /// needed (an expected condition, not an error), or an error when the length prefix is out
    /// of range, so the caller can refuse before reading (or allocating) anything more.
    pub fn check(buf: &[u8]) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = buf.get(..2) else {
            return Ok(None);
        };
        let total = usize::from(u16::from_be_bytes([prefix[0], prefix[1]])) + 2;
        if total > MAX_FRAME {
            return Err(FrameError::TooLarge(total));
        }
        if total < HEADER_LEN {
            return Err(FrameError::TooShort(total));
        }
        Ok((buf.len() >= total).then_some(total))
    }

    /// Reads the total frame length from a 2-byte prefix, validated as in [`Frame::check`].
    pub fn total_len(prefix: [u8; 2]) -> Result<usize, FrameError> {
        match Frame::check(&[prefix[0], prefix[1]]) {
            Ok(_) => Ok(usize::from(u16::from_be_bytes(prefix)) + 2),
            Err(e) => Err(e),
        }
    }
}

/// A cursor over untrusted bytes; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// Fails unless every byte was consumed (rustls `TrailingData`).
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingData(self.buf.len()))
        }
    }
}
