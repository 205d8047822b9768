//! X8: rollover statements, their encoding, and the chain of trusted roots.

use ed25519_dalek::{Signer, SigningKey};
use tally_proto::CertificateBody;

use super::*;
use crate::trust::{MakClaim, TrustError, sign_certificate};

const NOW: Timestamp = Timestamp(1_800_000_000_000);

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn statement(old: &SigningKey, new: &SigningKey, until: Option<Timestamp>) -> RootRollover {
    let mut s = RootRollover::unsigned(&old.verifying_key(), &new.verifying_key(), NOW, until);
    s.signature_by_old = old.sign(&s.message_for_old()).to_bytes();
    s.signature_by_new = new.sign(&s.message_for_new()).to_bytes();
    s
}

fn certificate(root: &SigningKey) -> tally_proto::HostCertificate {
    let body = CertificateBody {
        host_key: key(99).verifying_key().to_bytes(),
        key_group: 3,
        generation: 1,
        key_serial: 7,
        not_before: NOW.seconds() - 86_400,
        not_after: NOW.seconds() + 365 * 86_400,
        authority_id: authority_id(&root.verifying_key()),
    };
    sign_certificate(root, body)
}

// X8: the encoding round-trips, fits one 250-byte frame (R15), and refuses other lengths,
// versions and trailing bytes.
#[test]
fn x8_statement_round_trips_and_fits_a_frame() {
    let s = statement(&key(1), &key(2), Some(NOW.plus_days(30)));
    let bytes = s.to_bytes();
    assert_eq!(bytes.len(), STATEMENT_LEN);
    const { assert!(STATEMENT_LEN <= 250) };
    assert_eq!(RootRollover::from_bytes(&bytes), Ok(s));
    assert_eq!(parse_file(&s.to_text()), Ok(vec![s]));
    let mut long = bytes.to_vec();
    long.push(0);
    assert!(RootRollover::from_bytes(&long).is_err());
    assert!(RootRollover::from_bytes(&bytes[..100]).is_err());
    let mut v2 = bytes;
    v2[0] = 2;
    assert_eq!(
        RootRollover::from_bytes(&v2),
        Err(RolloverError::Malformed("unknown version"))
    );
    assert!(parse_file("tally-host-certificate-v1 00\n").is_err());
    assert!(parse_file(&format!("{} extra\n", s.to_text().trim())).is_err());
    assert_eq!(parse_file("# comment\n\n"), Ok(vec![]));
}

// X8: the test vector in PROTOCOL.md (keys from seeds 0x01.. and 0x02.., issued at
// 1 800 000 000 s, old root trusted until 1 802 592 000 s); the same bytes come out of an
// independent implementation (Python `cryptography`).
#[test]
fn x8_statement_test_vector() {
    let s = statement(&key(1), &key(2), Some(NOW.plus_days(30)));
    let hex = to_hex(&s.to_bytes());
    assert_eq!(&hex[..114], VECTOR_BODY, "body");
    assert_eq!(hex.len(), 2 * STATEMENT_LEN);
    // Ed25519 is deterministic (RFC 8032), so the whole statement is a fixed vector.
    assert_eq!(hex, VECTOR_FULL);
}

const VECTOR_BODY: &str = "0134750f98bd59fcfc8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394000000006b49d200000000006b715f00";
const VECTOR_FULL: &str = "0134750f98bd59fcfc8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394000000006b49d200000000006b715f0080d7dd4debccc50acf987b67f247daed32190ae360377bd33896945108257e00f88534be9be4f36739b8461dd83938285fe35874f3becd7de8f4c132603dce0f7f5cd95b5bed4d4277bbaf83877dbb8038b3f4af55e2b4b143ba205a9d1eb23b3648bd00f5f958aa27438e4979277653d059d97966ba05da00b57570d8c0ff04";

// X8: a client that trusts root A accepts certificates and MAK claims from root B once it has
// verified A's statement handing trust to B, and not before.
#[test]
fn x8_a_chain_extends_trust_to_the_new_root() {
    let (a, b) = (key(1), key(2));
    let cert = certificate(&b);
    let mut chain = Chain::new(a.verifying_key());
    assert_eq!(
        chain.anchor().verify_certificate(&cert, NOW).err(),
        Some(TrustError::UnknownAuthority)
    );
    assert_eq!(chain.accept(statement(&a, &b, None)), Ok(Accepted::Added));
    assert_eq!(chain.accept(statement(&a, &b, None)), Ok(Accepted::Known));
    chain
        .anchor()
        .verify_certificate(&cert, NOW)
        .expect("B's certificate verifies through A");
    // The old root still verifies (no old_root_until).
    chain
        .anchor()
        .verify_certificate(&certificate(&a), NOW)
        .expect("A's certificate still verifies");
    assert_eq!(chain.anchor().key(), &a.verifying_key());
    assert_eq!(chain.anchor().current(), &b.verifying_key());
    let claim = MakClaim {
        serial: 1,
        cmid: [1; 16],
        sku: [2; 16],
        hardware: [3; 5],
        day: 20_000,
    };
    let sig = b.sign(&claim.signed_bytes()).to_bytes();
    assert!(
        claim
            .verify(&TrustAnchor::new(a.verifying_key()), &sig)
            .is_err()
    );
    claim.verify(chain.anchor(), &sig).expect("MAK claim by B");
    // The file form round-trips into the same chain.
    let mut again = Chain::new(a.verifying_key());
    let (added, refused) = again.accept_all(&parse_file(&chain.to_text()).expect("parse"));
    assert_eq!((added, refused.len()), (1, 0));
}

// X8: a statement not signed by the trusted root is refused with its own message.
#[test]
fn x8_a_forged_rollover_is_refused() {
    let (a, b, mallory) = (key(1), key(2), key(3));
    let mut chain = Chain::new(a.verifying_key());
    // Signed by another key but naming A's id.
    let mut forged = statement(&mallory, &b, None);
    forged.old_authority_id = authority_id(&a.verifying_key());
    forged.signature_by_old = mallory.sign(&forged.message_for_old()).to_bytes();
    forged.signature_by_new = b.sign(&forged.message_for_new()).to_bytes();
    let err = chain.accept(forged).expect_err("forged");
    assert!(matches!(err, RolloverError::NotSignedByTrustedRoot { .. }));
    assert!(
        err.to_string()
            .starts_with("rollover statement is not signed by the root this client trusts"),
        "{err}"
    );
    // Signed by another root under its own name.
    assert!(matches!(
        chain.accept(statement(&mallory, &b, None)),
        Err(RolloverError::NotSignedByTrustedRoot { .. })
    ));
    // Altered after signing.
    let mut altered = statement(&a, &b, None);
    altered.new_public_key = mallory.verifying_key().to_bytes();
    assert!(matches!(
        chain.accept(altered),
        Err(RolloverError::NotSignedByTrustedRoot { .. })
    ));
    // Signed by A, but the new key never signed: no proof of possession.
    let mut no_pop = statement(&a, &b, None);
    no_pop.signature_by_new = mallory.sign(&no_pop.message_for_new()).to_bytes();
    assert_eq!(
        chain.accept(no_pop),
        Err(RolloverError::NoProofOfPossession)
    );
    // The old root's signature over the new-key message does not pass as one (contexts differ).
    let mut swapped = statement(&a, &b, None);
    swapped.signature_by_old = a.sign(&swapped.message_for_new()).to_bytes();
    assert!(chain.accept(swapped).is_err());
    assert!(chain.statements().is_empty());
    assert!(
        chain
            .anchor()
            .verify_certificate(&certificate(&b), NOW)
            .is_err()
    );
}

// X8: chains of several statements, accepted in any order; a statement from a root further
// down is accepted only once its predecessor is; loops are refused.
#[test]
fn x8_longer_chains_in_any_order() {
    let (a, b, c) = (key(1), key(2), key(3));
    let mut chain = Chain::new(a.verifying_key());
    let bc = statement(&b, &c, None);
    assert!(matches!(
        chain.accept(bc),
        Err(RolloverError::NotSignedByTrustedRoot { .. })
    ));
    let (added, refused) = chain.accept_all(&[bc, statement(&a, &b, None)]);
    assert_eq!((added, refused.len()), (2, 0));
    chain
        .anchor()
        .verify_certificate(&certificate(&c), NOW)
        .expect("C");
    assert_eq!(
        chain.accept(statement(&c, &a, None)),
        Err(RolloverError::Loop)
    );
    // A client that trusts C only does not accept A→B.
    let mut other = Chain::new(c.verifying_key());
    assert!(other.accept(statement(&a, &b, None)).is_err());
}

// X8: old_root_until retires the old root: its certificates verify until then, not after;
// the new root's do.
#[test]
fn x8_old_root_until_retires_the_old_root() {
    let (a, b) = (key(1), key(2));
    let until = NOW.plus_days(1);
    let mut chain = Chain::new(a.verifying_key());
    chain
        .accept(statement(&a, &b, Some(until)))
        .expect("accept");
    let old = certificate(&a);
    chain
        .anchor()
        .verify_certificate(&old, NOW)
        .expect("before");
    assert_eq!(
        chain
            .anchor()
            .verify_certificate(&old, until.plus_days(1))
            .err(),
        Some(TrustError::RootRetired { until })
    );
    chain
        .anchor()
        .verify_certificate(&certificate(&b), until.plus_days(1))
        .expect("new root");
    assert_eq!(chain.anchor().keys_at(until.plus_days(1)).len(), 1);
    assert_eq!(chain.anchor().keys_at(NOW).len(), 2);
}
