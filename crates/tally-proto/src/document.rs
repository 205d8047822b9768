//! Documents a client fetches from a host in chunks (version 2, X7): the authority's signed
//! revocation list and its root rollover statements. A document is signed by the authority,
//! never by the host that relays it, so any host can relay it and none can change it; the
//! transport only has to fit R15's 250-byte frames.
//!
//! ```text
//! DocumentRequest (0x06): doc (u8) | offset (u32)
//! DocumentChunk   (0x07): doc (u8) | serial (u32) | total_len (u32) | offset (u32)
//!                         | data_len (u8) | data (data_len ≤ 224)
//! ```
//!
//! The client asks for offset 0, then for each next offset until it holds `total_len` bytes,
//! on one connection. Every chunk names the document's `serial`: a chunk of another serial
//! (the host loaded a newer one meanwhile) makes the client start again. A host without the
//! document answers `serial = 0, total_len = 0` and no data.

use crate::codec::{DecodeError, Reader};
use crate::revocation::MAX_LIST_BYTES;

/// Largest data part of one chunk: the chunk frame is then 242 bytes (R15: ≤ 250).
pub const CHUNK_DATA_MAX: usize = 224;

/// Largest document a client fetches (a longer `total_len` is refused before any more is
/// read): the revocation list's own bound.
pub const MAX_DOCUMENT_BYTES: u32 = MAX_LIST_BYTES as u32;

/// Which document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DocumentKind {
    /// The authority's signed revocation list ([`crate::revocation::RevocationList`]).
    RevocationList = 1,
    /// The chain of root rollover statements the host trusts its certificate through.
    RootRollover = 2,
}

impl DocumentKind {
    pub(crate) fn from_u8(v: u8) -> Result<Self, DecodeError> {
        match v {
            1 => Ok(Self::RevocationList),
            2 => Ok(Self::RootRollover),
            _ => Err(DecodeError::InvalidField {
                field: "document",
                reason: "unknown document kind",
            }),
        }
    }

    /// A stable name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::RevocationList => "revocation_list",
            Self::RootRollover => "root_rollover",
        }
    }
}

/// Client → host: send me `doc` from byte `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DocumentRequest {
    /// The document.
    pub doc: DocumentKind,
    /// First byte wanted.
    pub offset: u32,
}

/// Host → client: one piece of a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentChunk {
    /// The document.
    pub doc: DocumentKind,
    /// The document's serial (a revocation list's serial; 0 when the host has none).
    pub serial: u32,
    /// The whole document's length in bytes.
    pub total_len: u32,
    /// Where `data` starts.
    pub offset: u32,
    /// At most [`CHUNK_DATA_MAX`] bytes.
    pub data: Vec<u8>,
}

impl DocumentChunk {
    /// The chunk of `document` (serial `serial`) starting at `offset`: empty past the end.
    pub fn of(doc: DocumentKind, serial: u32, document: &[u8], offset: u32) -> Self {
        let start = (offset as usize).min(document.len());
        let end = (start + CHUNK_DATA_MAX).min(document.len());
        Self {
            doc,
            serial,
            // Documents are bounded by MAX_DOCUMENT_BYTES when loaded, far below u32::MAX.
            total_len: u32::try_from(document.len()).unwrap_or(u32::MAX),
            offset,
            data: document[start..end].to_vec(),
        }
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.doc as u8);
        out.extend_from_slice(&self.serial.to_be_bytes());
        out.extend_from_slice(&self.total_len.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        // `of` and `read` keep data within CHUNK_DATA_MAX (< 256).
        out.push(self.data.len().min(CHUNK_DATA_MAX) as u8);
        out.extend_from_slice(&self.data[..self.data.len().min(CHUNK_DATA_MAX)]);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let doc = DocumentKind::from_u8(r.u8("document")?)?;
        let serial = r.u32("serial")?;
        let total_len = r.u32("total_len")?;
        let offset = r.u32("offset")?;
        let len = usize::from(r.u8("data length")?);
        if len > CHUNK_DATA_MAX {
            return Err(DecodeError::InvalidField {
                field: "data length",
                reason: "longer than 224 bytes",
            });
        }
        let data = r.take(len, "data")?.to_vec();
        Ok(Self {
            doc,
            serial,
            total_len,
            offset,
            data,
        })
    }
}

impl DocumentRequest {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.doc as u8);
        out.extend_from_slice(&self.offset.to_be_bytes());
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            doc: DocumentKind::from_u8(r.u8("document")?)?,
            offset: r.u32("offset")?,
        })
    }
}

/// Reassembles a document from chunks, refusing anything a hostile host could use to make the
/// client read without bound or mix two documents.
#[derive(Debug)]
pub struct Assembler {
    doc: DocumentKind,
    serial: Option<u32>,
    total: u32,
    buf: Vec<u8>,
}

/// Why a chunk was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AssembleError {
    /// A chunk of another document, serial or length than the first.
    #[error("the host changed the document while it was being fetched")]
    Changed,
    /// A chunk that does not start where the previous ended, or is empty before the end.
    #[error("the host sent a chunk out of order")]
    OutOfOrder,
    /// The announced length is over the bound.
    #[error("the host announced a document of {0} bytes (more than the {max} allowed)", max = MAX_DOCUMENT_BYTES)]
    TooLarge(u32),
}

impl Assembler {
    /// Starts fetching `doc`.
    pub fn new(doc: DocumentKind) -> Self {
        Self {
            doc,
            serial: None,
            total: 0,
            buf: Vec::new(),
        }
    }

    /// The request for the next chunk.
    pub fn next_request(&self) -> DocumentRequest {
        DocumentRequest {
            doc: self.doc,
            offset: u32::try_from(self.buf.len()).unwrap_or(u32::MAX),
        }
    }

    /// Takes a chunk; `Ok(Some(bytes))` once the document is whole (empty when the host has
    /// none), `Ok(None)` when more is needed.
    pub fn push(&mut self, chunk: DocumentChunk) -> Result<Option<(u32, Vec<u8>)>, AssembleError> {
        if chunk.doc != self.doc {
            return Err(AssembleError::Changed);
        }
        if chunk.total_len > MAX_DOCUMENT_BYTES {
            return Err(AssembleError::TooLarge(chunk.total_len));
        }
        match self.serial {
            None => {
                self.serial = Some(chunk.serial);
                self.total = chunk.total_len;
            }
            Some(s) if s != chunk.serial || self.total != chunk.total_len => {
                return Err(AssembleError::Changed);
            }
            Some(_) => {}
        }
        if chunk.offset as usize != self.buf.len() {
            return Err(AssembleError::OutOfOrder);
        }
        let remaining = self.total as usize - self.buf.len();
        if chunk.data.len() > remaining || (chunk.data.is_empty() && remaining > 0) {
            return Err(AssembleError::OutOfOrder);
        }
        self.buf.extend_from_slice(&chunk.data);
        if self.buf.len() == self.total as usize {
            Ok(Some((chunk.serial, std::mem::take(&mut self.buf))))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_travels_in_chunks_and_reassembles() {
        let doc: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut a = Assembler::new(DocumentKind::RevocationList);
        let mut chunks = 0;
        let whole = loop {
            let req = a.next_request();
            let chunk = DocumentChunk::of(req.doc, 9, &doc, req.offset);
            chunks += 1;
            if let Some(done) = a.push(chunk).expect("in order") {
                break done;
            }
        };
        assert_eq!(whole, (9, doc));
        assert_eq!(chunks, 5); // 1000 / 224 rounded up
    }

    #[test]
    fn a_host_without_the_document_answers_empty() {
        let mut a = Assembler::new(DocumentKind::RevocationList);
        let chunk = DocumentChunk::of(DocumentKind::RevocationList, 0, &[], 0);
        assert_eq!(a.push(chunk), Ok(Some((0, Vec::new()))));
    }

    #[test]
    fn a_changed_serial_or_a_gap_or_an_oversized_document_is_refused() {
        let doc = vec![1u8; 500];
        let mut a = Assembler::new(DocumentKind::RevocationList);
        a.push(DocumentChunk::of(DocumentKind::RevocationList, 1, &doc, 0))
            .expect("first");
        let other = DocumentChunk::of(DocumentKind::RevocationList, 2, &doc, 224);
        assert_eq!(a.push(other), Err(AssembleError::Changed));

        let mut a = Assembler::new(DocumentKind::RevocationList);
        let gap = DocumentChunk::of(DocumentKind::RevocationList, 1, &doc, 224);
        assert_eq!(a.push(gap), Err(AssembleError::OutOfOrder));

        let mut a = Assembler::new(DocumentKind::RevocationList);
        let huge = DocumentChunk {
            doc: DocumentKind::RevocationList,
            serial: 1,
            total_len: u32::MAX,
            offset: 0,
            data: vec![0; 10],
        };
        assert_eq!(a.push(huge), Err(AssembleError::TooLarge(u32::MAX)));

        // A chunk that stalls (empty before the end) cannot make the client loop for ever.
        let mut a = Assembler::new(DocumentKind::RevocationList);
        let stall = DocumentChunk {
            doc: DocumentKind::RevocationList,
            serial: 1,
            total_len: 10,
            offset: 0,
            data: Vec::new(),
        };
        assert_eq!(a.push(stall), Err(AssembleError::OutOfOrder));
    }
}
