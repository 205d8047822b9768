//! The authority's side of the transparency log (X8): what it appends, and the signed tree
//! heads and proofs it serves.
//!
//! Every object the authority signs for someone is appended as a [`LogEntry`] (kind, time, the
//! exact object): host certificates and MAK claims in the transaction that records the
//! activation (`AuthorityStore::activate_logged`), signed catalogs, certificates made with
//! `tally authority certify` and revocation lists through [`Service::append`]. Tree heads are
//! computed and signed **on demand** (a head for any size up to the log's, timestamped when
//! signed), never stored: a head is a statement about leaves that never change, so two heads of
//! one size signed at different times carry the same root, and nothing has to be kept in step
//! across the authority processes. Proofs are built from the stored leaf hashes (RFC 9162
//! 2.1.3.1 and 2.1.4.1), which costs one read of `size` hashes (32 bytes each) per proof.
//!
//! A part of [`Service`] (like `service/revoke.rs`), reachable as `tally_authority::transparency`.

use serde::{Deserialize, Serialize};
use tally_core::time::Timestamp;
use tally_log::merkle::{consistency_proof, inclusion_proof, root};
use tally_log::{
    ConsistencyProof, EntryKind, Hash, InclusionProof, LogEntry, SignedTreeHead, TreeHead,
};

use super::{Service, ServiceError};
use crate::store::StoredEntry;

/// The most entries one page of [`Service::log_entries`] returns.
pub const MAX_PAGE: u32 = 1000;

/// What an activation's answer carries about its log entry (X8).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct LogReceipt {
    /// The entry's leaf index.
    pub index: u64,
    /// The size of the signed tree head in the proof.
    pub tree_size: u64,
    /// The inclusion proof file (`tally-log-inclusion-v1 HEX`): the entry, its path and a
    /// signed tree head. A host keeps it as `certificate.proof`.
    pub proof: String,
}

impl LogReceipt {
    /// The receipt of an inclusion proof.
    pub fn of(proof: &InclusionProof) -> Self {
        Self {
            index: proof.index,
            tree_size: proof.head.size,
            proof: proof.to_text(),
        }
    }
}

/// A consistency proof between two sizes, with the signed head of the newer one.
#[derive(Clone, Debug)]
pub struct Consistency {
    /// The proof.
    pub proof: ConsistencyProof,
    /// The signed head of `proof.new_size`.
    pub head: SignedTreeHead,
}

impl Service {
    /// The entry for an object signed now.
    pub fn log_entry(&self, kind: EntryKind, object: Vec<u8>, now: Timestamp) -> LogEntry {
        LogEntry {
            kind,
            timestamp_ms: now.millis(),
            object,
        }
    }

    /// Appends an object the authority signed (a catalog, a revocation list, a certificate
    /// made outside an activation) to the log in a transaction of its own; returns its index.
    pub async fn append(&self, kind: EntryKind, object: Vec<u8>) -> Result<u64, ServiceError> {
        let entry = self.log_entry(kind, object, self.clock.now());
        Ok(self.store.append_log(&entry).await?)
    }

    /// Appends an object and returns its inclusion proof in the tree that ends with it.
    pub async fn append_proven(
        &self,
        kind: EntryKind,
        object: Vec<u8>,
    ) -> Result<InclusionProof, ServiceError> {
        let index = self.append(kind, object).await?;
        self.inclusion_proof(index, Some(index + 1)).await
    }

    /// The log's size.
    pub async fn log_size(&self) -> Result<u64, ServiceError> {
        Ok(self.store.log_size().await?)
    }

    async fn size_or_current(&self, size: Option<u64>) -> Result<u64, ServiceError> {
        let current = self.store.log_size().await?;
        match size {
            None => Ok(current),
            Some(s) if s <= current => Ok(s),
            Some(s) => Err(ServiceError::BadRequest(format!(
                "the log has {current} entries; there is no tree of size {s} yet"
            ))),
        }
    }

    fn sign_head(&self, leaves: &[Hash]) -> Result<SignedTreeHead, ServiceError> {
        Ok(self.authority.sign_tree_head(TreeHead {
            size: leaves.len() as u64,
            root: root(leaves),
            timestamp_ms: self.clock.now().millis(),
        })?)
    }

    /// A signed tree head of `size` entries (default: the whole log), signed now.
    pub async fn log_head(&self, size: Option<u64>) -> Result<SignedTreeHead, ServiceError> {
        let size = self.size_or_current(size).await?;
        let leaves = self.store.log_leaf_hashes(size).await?;
        self.sign_head(&leaves)
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries (default: the whole
    /// log), with that tree's signed head.
    pub async fn inclusion_proof(
        &self,
        index: u64,
        size: Option<u64>,
    ) -> Result<InclusionProof, ServiceError> {
        let size = self.size_or_current(size).await?;
        if index >= size {
            return Err(ServiceError::BadRequest(format!(
                "entry {index} is not in a tree of size {size}"
            )));
        }
        let leaves = self.store.log_leaf_hashes(size).await?;
        let entry = self
            .store
            .log_entries(index, 1)
            .await?
            .into_iter()
            .next()
            .filter(|e| e.index == index)
            .ok_or(crate::store::StoreError::LogDamaged {
                index,
                what: "is missing (deleted)",
            })?;
        let path =
            inclusion_proof(index, &leaves).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        Ok(InclusionProof {
            head: self.sign_head(&leaves)?,
            index,
            entry: entry.entry,
            path,
        })
    }

    /// The inclusion proof of the latest entry holding the object with SHA-256
    /// `object_hash` (a host's certificate), in the whole log.
    pub async fn inclusion_proof_of_object(
        &self,
        object_hash: &Hash,
    ) -> Result<InclusionProof, ServiceError> {
        let index = self
            .store
            .log_find(object_hash)
            .await?
            .ok_or(ServiceError::NotLogged)?;
        self.inclusion_proof(index, None).await
    }

    /// The consistency proof from the tree of `old` entries to the tree of `new` (default: the
    /// whole log), with the signed head of `new`.
    pub async fn consistency_proof(
        &self,
        old: u64,
        new: Option<u64>,
    ) -> Result<Consistency, ServiceError> {
        let new = self.size_or_current(new).await?;
        if old > new {
            return Err(ServiceError::BadRequest(format!(
                "the log has {new} entries, fewer than the {old} of the older head: it shrank"
            )));
        }
        let leaves = self.store.log_leaf_hashes(new).await?;
        let path =
            consistency_proof(old, &leaves).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        Ok(Consistency {
            proof: ConsistencyProof {
                old_size: old,
                new_size: new,
                path,
            },
            head: self.sign_head(&leaves)?,
        })
    }

    /// Up to `limit` (at most [`MAX_PAGE`]) entries from index `from`.
    pub async fn log_entries(
        &self,
        from: u64,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, ServiceError> {
        Ok(self.store.log_entries(from, limit.min(MAX_PAGE)).await?)
    }
}
