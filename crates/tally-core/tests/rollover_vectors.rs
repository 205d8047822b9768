//! X8: the published rollover test vectors (`docs/test-vectors/rollover.json`), generated from
//! fixed seeds, checked against the committed file (a drift fails), and every expected result
//! checked against the real verifier. `TALLY_BLESS=1 cargo test -p tally-core --test
//! rollover_vectors` rewrites the file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};
use tally_core::hex::to_hex;
use tally_core::rollover::{Chain, RolloverError, RootRollover};
use tally_core::time::Timestamp;
use tally_core::trust::authority_id;

const ISSUED_AT: Timestamp = Timestamp(1_800_000_000_000);

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn sign(s: &mut RootRollover, old: &SigningKey, new: &SigningKey) {
    s.signature_by_old = old.sign(&s.message_for_old()).to_bytes();
    s.signature_by_new = new.sign(&s.message_for_new()).to_bytes();
}

fn statement(old: &SigningKey, new: &SigningKey, until: Option<Timestamp>) -> RootRollover {
    let mut s =
        RootRollover::unsigned(&old.verifying_key(), &new.verifying_key(), ISSUED_AT, until);
    sign(&mut s, old, new);
    s
}

fn outcome(r: Result<tally_core::rollover::Accepted, RolloverError>) -> &'static str {
    match r {
        Ok(_) => "accepted",
        Err(RolloverError::NotSignedByTrustedRoot { .. }) => "not_signed_by_trusted_root",
        Err(RolloverError::NoProofOfPossession) => "no_proof_of_possession",
        Err(RolloverError::Loop) => "loop",
        Err(RolloverError::Malformed(_)) => "malformed",
        Err(_) => "other",
    }
}

/// Each case: the statement bytes, and what a verifier that trusts root A (seed 0x01) and has
/// accepted the statements before it in `chain` (if any) does with it.
fn vectors() -> Value {
    let (a, b, c, m) = (key(1), key(2), key(3), key(9));
    let ab = statement(&a, &b, Some(ISSUED_AT.plus_days(30)));
    let bc = statement(&b, &c, None);
    let mut forged = statement(&m, &b, None);
    forged.old_authority_id = authority_id(&a.verifying_key());
    sign(&mut forged, &m, &b);
    let mut no_pop = statement(&a, &c, None);
    no_pop.signature_by_new = m.sign(&no_pop.message_for_new()).to_bytes();
    let ba = statement(&b, &a, None);
    let cases: Vec<(&str, Vec<RootRollover>, RootRollover)> = vec![
        (
            "A hands trust to B (old root retired 30 days later)",
            vec![],
            ab,
        ),
        ("B hands trust to C, after A to B", vec![ab], bc),
        ("B to C without A to B first", vec![], bc),
        ("signed by root M, naming A's id", vec![], forged),
        ("signed by A, but C never signed it", vec![], no_pop),
        ("B back to A (a loop)", vec![ab], ba),
    ];
    let cases: Vec<Value> = cases
        .into_iter()
        .map(|(name, before, s)| {
            let mut chain = Chain::new(a.verifying_key());
            for p in &before {
                chain.accept(*p).unwrap();
            }
            json!({
                "name": name,
                "chain_before": before.iter().map(|p| to_hex(&p.to_bytes())).collect::<Vec<_>>(),
                "statement": to_hex(&s.to_bytes()),
                "expected": outcome(chain.accept(s)),
            })
        })
        .collect();
    json!({
        "description": "Root rollover statements (docs/PROTOCOL.md \"Root rollover\") and what a verifier that trusts root A does with each, after accepting chain_before. Keys are Ed25519 from 32-byte seeds: A 0x01.., B 0x02.., C 0x03.., M 0x09...",
        "roots": {
            "A": to_hex(a.verifying_key().as_bytes()),
            "B": to_hex(b.verifying_key().as_bytes()),
            "C": to_hex(c.verifying_key().as_bytes()),
            "M": to_hex(m.verifying_key().as_bytes()),
        },
        "issued_at": ISSUED_AT.seconds(),
        "cases": cases,
        "malformed": [
            { "name": "184 bytes", "statement": to_hex(&ab.to_bytes()[..184]), "expected": "malformed" },
            { "name": "version 2", "statement": format!("02{}", &to_hex(&ab.to_bytes())[2..]), "expected": "malformed" },
        ],
    })
}

#[test]
fn x8_published_rollover_vectors_match_the_code() {
    let v = vectors();
    let expected: Vec<&str> = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["expected"].as_str().unwrap())
        .collect();
    // What PROTOCOL.md states, so a regression cannot be blessed into the file.
    assert_eq!(
        expected,
        [
            "accepted",
            "accepted",
            "not_signed_by_trusted_root",
            "not_signed_by_trusted_root",
            "no_proof_of_possession",
            "loop",
        ]
    );
    for m in v["malformed"].as_array().unwrap() {
        let bytes = tally_core::hex::from_hex(m["statement"].as_str().unwrap()).unwrap();
        assert!(RootRollover::from_bytes(&bytes).is_err(), "{m}");
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/test-vectors/rollover.json");
    let text = serde_json::to_string_pretty(&v).unwrap() + "\n";
    if std::env::var_os("TALLY_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} drifted from what the code generates: run `TALLY_BLESS=1 cargo test -p tally-core --test rollover_vectors` and review the diff",
        path.display()
    );
}
