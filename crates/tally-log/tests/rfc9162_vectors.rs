//! X8: the Merkle tree, inclusion and consistency proofs against published RFC 6962 / 9162
//! vectors, and properties over random trees.
//!
//! The vector data (leaf inputs, roots by size, subtree hashes, inclusion and consistency
//! paths) is from github.com/transparency-dev/merkle, `testonly/constants.go` and
//! `proof/verify_test.go` (Apache-2.0; the same vectors as Google's certificate-transparency
//! reference tests). Only the data is copied, never code. RFC 9162 keeps RFC 6962's hashing
//! (`0x00` leaf and `0x01` node prefixes, SHA-256), so these are RFC 9162 vectors too.

#![allow(clippy::expect_used)]

use proptest::prelude::*;
use tally_log::merkle::{
    Hash, ProofError, consistency_proof, empty_root, inclusion_proof, leaf_hash, node_hash, root,
    root_from_inclusion, verify_consistency, verify_inclusion,
};

fn h(text: &str) -> Hash {
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("vector hex"))
        .collect();
    bytes.try_into().expect("32 bytes")
}

fn bytes(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("vector hex"))
        .collect()
}

/// `LeafInputs()`.
const LEAF_INPUTS: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// `RootHashes()`: the root of the tree of the first n inputs, n = 0..=8.
const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// `NodeHashes()`: level, then index within the level.
const NODES: [&[&str]; 4] = [
    &[
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    &[
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    &[
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    &["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
];

/// `inclusionProofs`: (leaf index, tree size, path). The source numbers leaves from 1; here
/// they are the 0-based indexes RFC 9162 uses.
const INCLUSION: [(u64, u64, &[&str]); 5] = [
    (0, 1, &[]),
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

/// `consistencyProofs`: (old size, new size, path).
const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

fn vector_leaves() -> Vec<Hash> {
    LEAF_INPUTS.iter().map(|i| leaf_hash(&bytes(i))).collect()
}

fn path(p: &[&str]) -> Vec<Hash> {
    p.iter().map(|x| h(x)).collect()
}

#[test]
fn leaf_and_node_hashes_match_the_vectors() {
    let leaves = vector_leaves();
    for (i, want) in NODES[0].iter().enumerate() {
        assert_eq!(leaves[i], h(want), "leaf {i}");
    }
    for level in 1..NODES.len() {
        for (i, want) in NODES[level].iter().enumerate() {
            let got = node_hash(&h(NODES[level - 1][2 * i]), &h(NODES[level - 1][2 * i + 1]));
            assert_eq!(got, h(want), "level {level} node {i}");
        }
    }
}

#[test]
fn roots_match_the_vectors_for_every_size() {
    let leaves = vector_leaves();
    assert_eq!(empty_root(), h(ROOTS[0]));
    for n in 0..=8 {
        assert_eq!(root(&leaves[..n]), h(ROOTS[n]), "size {n}");
    }
}

#[test]
fn inclusion_proofs_match_the_vectors() {
    let leaves = vector_leaves();
    for (index, size, want) in INCLUSION {
        let tree = &leaves[..size as usize];
        let got = inclusion_proof(index, tree).expect("in range");
        assert_eq!(got, path(want), "index {index} size {size}");
        verify_inclusion(
            index,
            size,
            &leaves[index as usize],
            &got,
            &h(ROOTS[size as usize]),
        )
        .expect("the published proof verifies");
    }
}

#[test]
fn consistency_proofs_match_the_vectors() {
    let leaves = vector_leaves();
    for (old, new, want) in CONSISTENCY {
        let got = consistency_proof(old, &leaves[..new as usize]).expect("sizes");
        assert_eq!(got, path(want), "{old} -> {new}");
        verify_consistency(
            old,
            new,
            &h(ROOTS[old as usize]),
            &h(ROOTS[new as usize]),
            &got,
        )
        .expect("the published proof verifies");
    }
}

// The probes of the source's `corruptInclusionProof` / `corruptConsistencyProof`: each
// damaged variant of a good proof must fail.
#[test]
fn damaged_published_proofs_fail() {
    let leaves = vector_leaves();
    let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
    for (index, size, p) in INCLUSION.into_iter().skip(1) {
        let (p, r, l) = (path(p), h(ROOTS[size as usize]), leaves[index as usize]);
        let bad = |i: u64, s: u64, leaf: &Hash, pp: &[Hash], root: &Hash| {
            verify_inclusion(i, s, leaf, pp, root).is_err()
        };
        assert!(bad(index.wrapping_sub(1), size, &l, &p, &r));
        assert!(bad(index + 1, size, &l, &p, &r));
        assert!(bad(index ^ 2, size, &l, &p, &r));
        assert!(bad(index, size * 2, &l, &p, &r));
        assert!(bad(index, size / 2, &l, &p, &r));
        assert!(bad(index, size, &some, &p, &r));
        assert!(bad(index, size, &l, &p, &empty_root()));
        assert!(bad(index, size, &l, &p, &some));
        let mut longer = p.clone();
        longer.push(r);
        assert!(bad(index, size, &l, &longer, &r));
        let mut front = vec![r];
        front.extend_from_slice(&p);
        assert!(bad(index, size, &l, &front, &r));
        for i in 0..p.len() {
            let mut flipped = p.clone();
            flipped[i][0] ^= 8;
            assert!(bad(index, size, &l, &flipped, &r), "flipped {i}");
        }
        assert!(bad(index, size, &l, &p[..p.len() - 1], &r));
    }
    for (old, new, p) in CONSISTENCY.into_iter().skip(1) {
        let (p, r1, r2) = (path(p), h(ROOTS[old as usize]), h(ROOTS[new as usize]));
        let bad = |o: u64, n: u64, a: &Hash, b: &Hash, pp: &[Hash]| {
            verify_consistency(o, n, a, b, pp).is_err()
        };
        assert!(bad(old - 1, new, &r1, &r2, &p));
        assert!(bad(old + 1, new, &r1, &r2, &p));
        assert!(bad(old ^ 2, new, &r1, &r2, &p));
        assert!(bad(old, new * 2, &r1, &r2, &p));
        assert!(bad(old, new / 2, &r1, &r2, &p));
        assert!(bad(old, new, &some, &r2, &p));
        assert!(bad(old, new, &r1, &some, &p));
        assert!(bad(old, new, &r2, &r1, &p));
        assert!(bad(old, new, &r1, &r2, &[]));
        for extra in [r1, r2, p[0]] {
            let mut longer = p.clone();
            longer.push(extra);
            assert!(bad(old, new, &r1, &r2, &longer));
            let mut front = vec![extra];
            front.extend_from_slice(&p);
            assert!(bad(old, new, &r1, &r2, &front));
        }
        assert!(bad(old, new, &r1, &r2, &p[..p.len() - 1]));
        for i in 0..p.len() {
            let mut flipped = p.clone();
            flipped[i][0] ^= 16;
            assert!(bad(old, new, &r1, &r2, &flipped), "flipped {i}");
        }
    }
}

// The source's `TestVerifyConsistency` table of edge cases.
#[test]
fn consistency_edge_cases_of_the_vectors() {
    let (a, b) = ([1u8; 32], [2u8; 32]);
    let empty = empty_root();
    assert!(verify_consistency(0, 0, &a, &b, &[]).is_err());
    assert!(verify_consistency(1, 1, &a, &b, &[]).is_err());
    assert!(verify_consistency(0, 0, &a, &a, &[]).is_ok());
    assert!(verify_consistency(0, 1, &a, &b, &[]).is_ok());
    assert!(verify_consistency(1, 1, &b, &b, &[]).is_ok());
    assert_eq!(
        verify_consistency(1, 0, &a, &b, &[]),
        Err(ProofError::OldLargerThanNew { old: 1, new: 0 })
    );
    assert!(verify_consistency(2, 1, &a, &b, &[]).is_err());
    assert!(verify_consistency(1, 2, &a, &b, &[]).is_err());
    assert!(verify_consistency(0, 0, &empty, &empty, &[empty]).is_err());
    assert!(verify_consistency(0, 1, &empty, &empty, &[empty]).is_err());
    assert!(verify_consistency(1, 1, &empty, &empty, &[empty]).is_err());
    // And inclusion with impossible sizes.
    for (i, s) in [(0, 0), (1, 0), (2, 1)] {
        assert!(root_from_inclusion(i, s, &a, &[]).is_err());
    }
}

fn tree(n: usize) -> Vec<Hash> {
    (0..n as u64).map(|i| leaf_hash(&i.to_be_bytes())).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    // Every inclusion proof generated verifies; any altered leaf, index, size, root or path
    // hash fails.
    #[test]
    fn inclusion_proofs_verify_and_alterations_fail(
        (n, index) in (1usize..300).prop_flat_map(|n| (Just(n), 0..n)),
        flip in any::<(usize, u8)>(),
    ) {
        let leaves = tree(n);
        let (index, size) = (index as u64, n as u64);
        let r = root(&leaves);
        let p = inclusion_proof(index, &leaves).expect("in range");
        let leaf = leaves[index as usize];
        prop_assert!(verify_inclusion(index, size, &leaf, &p, &r).is_ok());
        let mut other = leaf;
        other[flip.0 % 32] ^= 1 | flip.1;
        prop_assert!(verify_inclusion(index, size, &other, &p, &r).is_err());
        let mut bad_root = r;
        bad_root[flip.0 % 32] ^= 1 | flip.1;
        prop_assert!(verify_inclusion(index, size, &leaf, &p, &bad_root).is_err());
        if size > 1 {
            prop_assert!(verify_inclusion((index + 1) % size, size, &leaf, &p, &r).is_err());
        }
        // The same path against the tree one leaf larger (its real root) fails.
        let bigger = root(&tree(n + 1));
        prop_assert!(verify_inclusion(index, size + 1, &leaf, &p, &bigger).is_err());
        if !p.is_empty() {
            let mut q = p.clone();
            let i = flip.0 % q.len();
            q[i][flip.0 % 32] ^= 1 | flip.1;
            prop_assert!(verify_inclusion(index, size, &leaf, &q, &r).is_err());
            prop_assert!(verify_inclusion(index, size, &leaf, &p[1..], &r).is_err());
        }
    }

    // Every consistency proof generated verifies; any altered root, size or path hash fails.
    #[test]
    fn consistency_proofs_verify_and_alterations_fail(
        (new, old) in (1usize..300).prop_flat_map(|n| (Just(n), 1..=n)),
        flip in any::<(usize, u8)>(),
    ) {
        let leaves = tree(new);
        let (o, n) = (old as u64, new as u64);
        let (r1, r2) = (root(&leaves[..old]), root(&leaves));
        let p = consistency_proof(o, &leaves).expect("sizes");
        prop_assert!(verify_consistency(o, n, &r1, &r2, &p).is_ok());
        let mut bad = r1;
        bad[flip.0 % 32] ^= 1 | flip.1;
        prop_assert!(verify_consistency(o, n, &bad, &r2, &p).is_err());
        let mut bad = r2;
        bad[flip.0 % 32] ^= 1 | flip.1;
        prop_assert!(verify_consistency(o, n, &r1, &bad, &p).is_err());
        let bigger = root(&tree(new + 1));
        prop_assert!(verify_consistency(o, n + 1, &r1, &bigger, &p).is_err());
        if !p.is_empty() {
            let mut q = p.clone();
            let i = flip.0 % q.len();
            q[i][flip.0 % 32] ^= 1 | flip.1;
            prop_assert!(verify_consistency(o, n, &r1, &r2, &q).is_err());
        }
        // A leaf changed in the old part is a rewrite: the new tree's proof no longer holds.
        let mut rewritten = leaves.clone();
        rewritten[flip.0 % old] = leaf_hash(b"rewritten");
        let r2x = root(&rewritten);
        let px = consistency_proof(o, &rewritten).expect("sizes");
        prop_assert!(verify_consistency(o, n, &r1, &r2x, &px).is_err());
    }
}

proptest! {
    // Decoding is total: arbitrary bytes or text never panic, and what decodes re-encodes to
    // the same bytes (no trailing bytes accepted, no second encoding of one value).
    #[test]
    fn decoders_are_total_and_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        use tally_log::{ConsistencyProof, InclusionProof, LogEntry, SignedTreeHead};
        if let Ok(h) = SignedTreeHead::from_bytes(&bytes) {
            prop_assert_eq!(h.to_bytes(), bytes.clone());
        }
        if let Ok(p) = InclusionProof::from_bytes(&bytes) {
            prop_assert_eq!(p.to_bytes(), bytes.clone());
        }
        if let Ok(p) = ConsistencyProof::from_bytes(&bytes) {
            prop_assert_eq!(p.to_bytes(), bytes.clone());
        }
        if let Ok(e) = LogEntry::from_leaf_input(&bytes) {
            prop_assert_eq!(e.leaf_input(), bytes.clone());
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = SignedTreeHead::from_text(&text);
        let _ = InclusionProof::from_text(&text);
        let _ = ConsistencyProof::from_text(&text);
    }
}
