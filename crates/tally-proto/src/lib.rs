//! Tally's wire format (`docs/PROTOCOL.md` is the normative description).
//!
//! Every message travels in one frame of at most [`MAX_FRAME`] bytes (R15):
//!
//! ```text
//! +-----------+---------+------+----------------+
//! | len (u16) | version | kind | body (len - 2) |
//! +-----------+---------+------+----------------+
//! ```
//!
//! `len` is big-endian and counts the bytes after itself. This crate does no I/O: callers hand
//! it byte slices ([`Frame::check`], [`Message::decode`]) and get bytes back
//! ([`Message::encode`]). It never allocates more than one frame for hostile input, never
//! panics on it, and rejects trailing bytes.
//!
//! # Layout
//! - [`codec`]: the bounded reader and the writer helpers.
//! - [`message`]: the message types and their encodings.
//! - [`result`]: the result codes a host puts in its responses.
//! - [`document`]: documents fetched in chunks (version 2): the revocation list, rollovers.
//! - [`revocation`]: the authority's signed revocation list's encoding (X7).

pub mod codec;
pub mod document;
pub mod message;
pub mod result;
pub mod revocation;

pub use codec::{DecodeError, Frame, FrameError};
pub use document::{DocumentChunk, DocumentKind, DocumentRequest};
pub use message::{
    ActivationRequest, ActivationResponse, CertificateBody, ErrorMessage, HostCertificate,
    LicenseState, MachineName, Message, MessageKind, RequestExt,
};
pub use result::ResultCode;
pub use revocation::RevocationList;

/// Largest frame, header included, in either direction (R15).
pub const MAX_FRAME: usize = 250;

/// The newest protocol version this crate speaks (version 2: X5–X7, see `docs/PROTOCOL.md`).
pub const PROTOCOL_VERSION: u8 = 2;

/// The oldest protocol version this crate still decodes and answers (a version-1 client gets
/// a version-1 answer from a version-2 host).
pub const MIN_PROTOCOL_VERSION: u8 = 1;

/// Bytes before the body: length (2), version (1), kind (1).
pub const HEADER_LEN: usize = 4;

/// Fuzzing entry points, compiled in normal builds so they cannot rot.
pub mod fuzzing {
    use crate::{Frame, Message};

    /// Decode arbitrary bytes; whatever decodes must re-encode to the same bytes and decode
    /// to the same message.
    pub fn fuzz_message(data: &[u8]) {
        if let Ok(Some(len)) = Frame::check(data)
            && let Ok(msg) = Message::decode(&data[..len])
        {
            // The version byte is the third of the frame (decode checked it is there).
            let bytes = msg.encode_as(data[2]);
            assert_eq!(&bytes[..], &data[..len], "re-encoding differs");
            assert_eq!(
                Message::decode(&bytes).ok(),
                Some(msg),
                "round trip differs"
            );
        }
    }
}
