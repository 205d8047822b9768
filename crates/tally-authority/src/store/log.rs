//! The transparency log's rows (X8), shared by both backends.
//!
//! A row holds the entry (kind, time, object), SHA-256 of the object (to find the entry of a
//! certificate a host holds) and the leaf hash. Whatever is read back is checked before it is
//! served: indexes dense from 0, the leaf hash that of the entry. A row deleted or changed in
//! the database is reported as [`StoreError::LogDamaged`] here, and a rewrite that hides itself
//! (rows renumbered, hashes recomputed) is caught by anyone holding an older signed head
//! (`tally log verify`).

use sha2::{Digest, Sha256};
use tally_log::{EntryKind, Hash, LogEntry};

use super::StoreError;

/// An entry as stored, with its index and leaf hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    /// Leaf index.
    pub index: u64,
    /// The entry.
    pub entry: LogEntry,
    /// `SHA-256(0x00 || leaf input)`, checked against the entry when read.
    pub leaf_hash: Hash,
}

/// SHA-256 of an object: the key to find where it was logged.
pub fn object_hash(object: &[u8]) -> Hash {
    Sha256::digest(object).into()
}

fn damaged(index: u64, what: &'static str) -> StoreError {
    StoreError::LogDamaged { index, what }
}

/// A row read back, checked: known kind, a 32-byte leaf hash equal to the entry's.
pub(crate) fn checked_row(
    index: i64,
    kind: i64,
    at: i64,
    object: Vec<u8>,
    leaf_hash: &[u8],
) -> Result<StoredEntry, StoreError> {
    let index = u64::try_from(index).map_err(|_| StoreError::BadValue("log index"))?;
    let kind = u8::try_from(kind)
        .ok()
        .and_then(|k| EntryKind::from_code(k).ok())
        .ok_or_else(|| damaged(index, "has an unknown kind"))?;
    let leaf_hash: Hash = leaf_hash
        .try_into()
        .map_err(|_| damaged(index, "has a leaf hash of the wrong length"))?;
    let entry = LogEntry {
        kind,
        timestamp_ms: at,
        object,
    };
    if entry.leaf_hash() != leaf_hash {
        return Err(damaged(index, "does not match its leaf hash (changed)"));
    }
    Ok(StoredEntry {
        index,
        entry,
        leaf_hash,
    })
}

/// The leaf hashes of indexes `0..size` from rows `(index, leaf hash)` in index order; a
/// missing index or a damaged hash is [`StoreError::LogDamaged`].
pub(crate) fn dense_leaves(
    rows: impl IntoIterator<Item = (i64, Vec<u8>)>,
    size: u64,
) -> Result<Vec<Hash>, StoreError> {
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    for (want, (idx, hash)) in (0u64..).zip(rows) {
        if u64::try_from(idx).ok() != Some(want) {
            return Err(damaged(want, "is missing (deleted)"));
        }
        out.push(
            hash.try_into()
                .map_err(|_| damaged(want, "has a leaf hash of the wrong length"))?,
        );
    }
    if (out.len() as u64) < size {
        return Err(damaged(out.len() as u64, "is missing (deleted)"));
    }
    Ok(out)
}
