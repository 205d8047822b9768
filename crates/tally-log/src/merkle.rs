//! The Merkle tree of RFC 9162 section 2.1, over leaf hashes.
//!
//! > The hash of a list with one entry (also known as a leaf hash) is:
//! > `MTH({d(0)}) = HASH(0x00 || d(0))`. For n > 1, let k be the largest power of two smaller
//! > than n (i.e., k < n <= 2k). The Merkle Tree Hash of an n-element list D_n is then defined
//! > recursively as `MTH(D_n) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))`.
//!
//! Proofs are generated from the leaf hashes of the tree they are for (a slice: the tree of
//! size `n` is the first `n` leaf hashes of the log), exactly as RFC 9162 2.1.3.1 (`PATH`) and
//! 2.1.4.1 (`PROOF`, `SUBPROOF`) define them, and verified with the algorithms of 2.1.3.2 and
//! 2.1.4.2, which need only the sizes, the roots and the path. Every function is total: a bad
//! size or a malformed proof is an error, never a panic.

use sha2::{Digest, Sha256};
use thiserror::Error;

/// A SHA-256 hash: a leaf hash, a node hash or a tree's root.
pub type Hash = [u8; 32];

/// The longest path a tree of at most 2^64 leaves needs.
pub const MAX_PATH: usize = 64;

/// Why a proof could not be made or does not verify.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is not inside a tree of size {size}")]
    IndexOutOfRange {
        /// The index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A consistency proof from a larger tree to a smaller one.
    #[error("a tree of size {old} cannot be a prefix of a tree of size {new}")]
    OldLargerThanNew {
        /// The first (older) size.
        old: u64,
        /// The second (newer) size.
        new: u64,
    },
    /// The path has the wrong number of hashes for the sizes given.
    #[error("the proof has the wrong number of hashes for these sizes")]
    PathLength,
    /// The inclusion path does not lead from the leaf to the root.
    #[error("the inclusion proof does not lead from this entry to the tree head's root")]
    InclusionRootMismatch,
    /// The consistency proof does not rebuild the older root.
    #[error("the consistency proof does not rebuild the older tree head's root")]
    OldRootMismatch,
    /// The consistency proof does not rebuild the newer root.
    #[error("the consistency proof does not rebuild the newer tree head's root")]
    NewRootMismatch,
    /// Trees of the same size with different roots.
    #[error("two tree heads of the same size have different roots")]
    SameSizeDifferentRoots,
}

/// `HASH(0x00 || input)`: the hash of one leaf (RFC 9162 2.1.1).
pub fn leaf_hash(input: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([0x00])
        .chain_update(input)
        .finalize()
        .into()
}

/// `HASH(0x01 || left || right)`: an interior node (RFC 9162 2.1.1).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([0x01])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The root of the empty tree: `MTH({}) = HASH()`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two smaller than `n` (`n >= 2`).
fn split(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// `MTH(D_n)`: the root of the tree whose leaf hashes are `leaves`.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [one] => *one,
        _ => {
            let k = split(leaves.len());
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

fn to_usize(v: u64, size: u64) -> Result<usize, ProofError> {
    usize::try_from(v).map_err(|_| ProofError::IndexOutOfRange { index: v, size })
}

/// `PATH(m, D_n)` (RFC 9162 2.1.3.1): the inclusion proof of leaf `index` in the tree whose
/// leaf hashes are `leaves` (its size is `leaves.len()`), from the leaf's sibling up.
pub fn inclusion_proof(index: u64, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    let size = leaves.len() as u64;
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    path(to_usize(index, size)?, leaves, &mut out);
    Ok(out)
}

fn path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &leaves[..k], out);
        out.push(root(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], out);
        out.push(root(&leaves[..k]));
    }
}

/// `PROOF(m, D_n)` (RFC 9162 2.1.4.1): the consistency proof from the tree of the first `old`
/// leaves to the tree whose leaf hashes are `leaves`. Empty when `old` is 0 or the whole tree
/// (both are consistent with anything, resp. only with the same root).
pub fn consistency_proof(old: u64, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    let new = leaves.len() as u64;
    if old > new {
        return Err(ProofError::OldLargerThanNew { old, new });
    }
    let mut out = Vec::new();
    if old > 0 && old < new {
        subproof(to_usize(old, new)?, leaves, true, &mut out);
    }
    Ok(out)
}

fn subproof(m: usize, leaves: &[Hash], whole: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !whole {
            out.push(root(leaves));
        }
        return;
    }
    // Here 0 < m < n, so n >= 2.
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], whole, out);
        out.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(root(&leaves[..k]));
    }
}

/// RFC 9162 2.1.3.2 up to the last comparison: the root that `path` leads to from the leaf
/// hash `leaf` at `index` in a tree of `size` leaves.
pub fn root_from_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    path: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if snode == 0 {
            return Err(ProofError::PathLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::PathLength);
    }
    Ok(r)
}

/// RFC 9162 2.1.3.2: checks that `path` proves the leaf hash `leaf` at `index` in the tree of
/// `size` leaves whose root is `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    path: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if root_from_inclusion(index, size, leaf, path)? == *root {
        Ok(())
    } else {
        Err(ProofError::InclusionRootMismatch)
    }
}

/// RFC 9162 2.1.4.2: checks that `path` proves the tree of `old` leaves with root `old_root`
/// is a prefix of the tree of `new` leaves with root `new_root`.
///
/// Sizes the RFC leaves to the caller: `old == new` holds with an empty path and equal roots
/// only; `old == 0` holds with an empty path (the empty tree is a prefix of every tree).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    path: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::OldLargerThanNew { old, new });
    }
    if old == new {
        if !path.is_empty() {
            return Err(ProofError::PathLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::SameSizeDifferentRoots)
        };
    }
    if old == 0 {
        return if path.is_empty() {
            Ok(())
        } else {
            Err(ProofError::PathLength)
        };
    }
    // 1. An empty path fails.
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::PathLength);
    };
    // 2. If `old` is an exact power of 2, the old root is the path's first value.
    let (start, rest): (&Hash, &[Hash]) = if old.is_power_of_two() {
        (old_root, path)
    } else {
        (first, rest)
    };
    // 3, 4.
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    // 5, 6.
    let (mut fr, mut sr) = (*start, *start);
    for c in rest {
        if snode == 0 {
            return Err(ProofError::PathLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // 7.
    if snode != 0 {
        return Err(ProofError::PathLength);
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(ProofError::NewRootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u8) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&[i])).collect()
    }

    #[test]
    fn split_is_the_largest_power_of_two_below() {
        for (n, k) in [(2, 1), (3, 2), (4, 2), (5, 4), (8, 4), (9, 8), (1025, 1024)] {
            assert_eq!(split(n), k, "n = {n}");
        }
    }

    #[test]
    fn edge_sizes() {
        assert_eq!(
            inclusion_proof(0, &[]),
            Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
        );
        let one = leaves(1);
        assert_eq!(inclusion_proof(0, &one), Ok(vec![]));
        assert_eq!(root(&one), one[0]);
        verify_inclusion(0, 1, &one[0], &[], &one[0]).expect("size 1");
        // A path of one hash for a tree of one leaf is too long.
        assert_eq!(
            verify_inclusion(0, 1, &one[0], &[one[0]], &one[0]),
            Err(ProofError::PathLength)
        );
        for n in 0..5u8 {
            let l = leaves(n);
            let r = root(&l);
            assert_eq!(consistency_proof(u64::from(n), &l), Ok(vec![]));
            assert_eq!(consistency_proof(0, &l), Ok(vec![]));
            verify_consistency(u64::from(n), u64::from(n), &r, &r, &[]).expect("old == new");
            verify_consistency(0, u64::from(n), &empty_root(), &r, &[]).expect("from empty");
        }
        assert_eq!(
            consistency_proof(3, &leaves(2)),
            Err(ProofError::OldLargerThanNew { old: 3, new: 2 })
        );
        let (a, b) = (root(&leaves(2)), root(&leaves(3)));
        assert_eq!(
            verify_consistency(2, 2, &a, &b, &[]),
            Err(ProofError::SameSizeDifferentRoots)
        );
        assert_eq!(
            verify_consistency(2, 3, &a, &b, &[]),
            Err(ProofError::PathLength)
        );
    }
}
