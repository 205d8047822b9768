//! The published test vectors (`docs/test-vectors/*.json`): generated here from fixed seeds,
//! checked against the committed files (a drift fails), and every expected result checked
//! against the real decoder and verifier. `TALLY_BLESS=1 cargo test -p tally-client --test
//! vectors` rewrites the files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use tally_core::catalog::Catalog;
use tally_core::hex::to_hex;
use tally_core::keys::ProductKey;
use tally_core::time::Timestamp;
use tally_core::trust::{
    HostIdentity, TrustAnchor, TrustError, authority_id, sha256, sign_certificate,
};
use tally_proto::{
    ActivationRequest, ActivationResponse, CertificateBody, DecodeError, Frame, LicenseState,
    MachineName, Message, RequestExt, ResultCode,
};
use uuid::Uuid;

const AUTHORITY_SEED: [u8; 32] = [0x11; 32];
const HOST_SEED: [u8; 32] = [0x22; 32];
const OTHER_AUTHORITY_SEED: [u8; 32] = [0x33; 32];
/// 2026-01-15T00:00:00Z, the day the vector certificate was "issued".
const ISSUE_DAY: i64 = 20_468;
/// 2026-03-01T12:00:00Z, when the vector request was made and answered.
const NOW_MS: i64 = 1_772_366_400_000;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/test-vectors")
}

fn trust_error_name(e: &TrustError) -> &'static str {
    match e {
        TrustError::UnknownAuthority => "unknown_authority",
        TrustError::BadCertificateSignature => "bad_certificate_signature",
        TrustError::CertificateExpired { .. } => "certificate_not_valid_now",
        TrustError::MalformedCertificate(_) => "malformed_certificate",
        TrustError::FingerprintMismatch => "fingerprint_mismatch",
        TrustError::BadResponseSignature => "bad_response_signature",
        TrustError::NonceMismatch => "nonce_mismatch",
        TrustError::GroupDoesNotCover { .. } => "group_does_not_cover",
        _ => "other",
    }
}

fn code_name(code: ResultCode) -> &'static str {
    code.name().unwrap_or("unknown")
}

/// What a host answers to an undecodable frame (docs/PROTOCOL.md "Which `Error` code").
fn error_for(frame: &[u8]) -> Option<ResultCode> {
    match Frame::check(frame) {
        Err(e) => Some(e.result_code()),
        Ok(None) => None,
        Ok(Some(_)) => match Message::decode(frame) {
            Err(e) => Some(DecodeError::result_code(&e)),
            Ok(Message::ActivationRequest(_) | Message::CertificateRequest) => None,
            // A host is never sent host-to-client kinds (tally-core `HostSession::handle`).
            Ok(_) => Some(ResultCode::MALFORMED_REQUEST),
        },
    }
}

struct World {
    authority: SigningKey,
    host: SigningKey,
    identity: HostIdentity,
    anchor: TrustAnchor,
    request: ActivationRequest,
    request_frame: Vec<u8>,
}

fn world() -> World {
    let authority = SigningKey::from_bytes(&AUTHORITY_SEED);
    let host = SigningKey::from_bytes(&HOST_SEED);
    let body = CertificateBody {
        host_key: host.verifying_key().to_bytes(),
        key_group: 1, // Server A
        generation: 1,
        key_serial: 42,
        not_before: (ISSUE_DAY - 1) * 86_400,
        not_after: (ISSUE_DAY + 20 * 365) * 86_400,
        authority_id: authority_id(&authority.verifying_key()),
    };
    let cert = sign_certificate(&authority, body);
    let identity = HostIdentity::new(host.clone(), cert).unwrap();
    let request = ActivationRequest {
        nonce: *b"tally-vector-001",
        cmid: Uuid::parse_str("c0ffee00-0000-4000-8000-000000000001").unwrap(),
        pool: Uuid::parse_str("a2026000-0000-4000-8000-000000000001").unwrap(),
        sku: Uuid::parse_str("5c000000-0000-4000-8000-000000000003").unwrap(),
        threshold: 5,
        license_state: LicenseState::InitialGrace,
        grace_remaining_minutes: 43_200,
        client_time: NOW_MS,
        ext: Some(RequestExt {
            sequence: 7,
            hardware_digest: *b"hw-dgst1",
        }),
        machine_name: MachineName::new("pc-01.example.test").unwrap(),
    };
    let request_frame = Message::ActivationRequest(request.clone()).encode();
    World {
        anchor: TrustAnchor::new(authority.verifying_key()),
        authority,
        host,
        identity,
        request,
        request_frame,
    }
}

fn keys_vectors() -> Value {
    let catalog = Catalog::demo();
    let setup: Vec<Value> = catalog
        .editions()
        .iter()
        .map(|e| {
            let mut ctx = b"tally/v1/setup-key\0".to_vec();
            ctx.extend_from_slice(e.sku.as_bytes());
            let d = sha256(&ctx);
            // docs/PROTOCOL.md: payload = (1 << 102) | (u128_be(D[0..16]) >> 26).
            let mut first = [0u8; 16];
            first.copy_from_slice(&d[..16]);
            let payload = (1u128 << 102) | (u128::from_be_bytes(first) >> 26);
            let key = ProductKey::setup_for(e.sku);
            assert_eq!(key.payload(), payload, "the documented derivation");
            assert_eq!(e.setup_key, key);
            json!({
                "sku": e.sku.to_string(),
                "sku_bytes": to_hex(e.sku.as_bytes()),
                "sha256_input": to_hex(&ctx),
                "sha256": to_hex(&d),
                "payload_hex": format!("{payload:027x}"),
                "key": key.to_string(),
            })
        })
        .collect();
    let good = ProductKey::setup_for(catalog.editions()[2].sku).to_string();
    let mut typo = good.clone().into_bytes();
    typo[0] = if typo[0] == b'B' { b'C' } else { b'B' };
    let typo = String::from_utf8(typo).unwrap();
    let mut swapped = good.clone().into_bytes();
    let i = (0..swapped.len() - 1)
        .find(|&i| swapped[i] != swapped[i + 1] && swapped[i] != b'-' && swapped[i + 1] != b'-')
        .unwrap();
    swapped.swap(i, i + 1);
    let swapped = String::from_utf8(swapped).unwrap();
    let parse = |k: &str| k.parse::<ProductKey>().is_ok();
    assert!(parse(&good) && !parse(&typo) && !parse(&swapped));
    json!({
        "description": "Setup keys derived from SKU ids (docs/PROTOCOL.md \"Keys\"), and text forms with their expected validity.",
        "setup_keys": setup,
        "parse": [
            { "text": good, "valid": true },
            { "text": good.to_lowercase().replace('-', " "), "valid": true },
            { "text": typo, "valid": false, "why": "one wrong character" },
            { "text": swapped, "valid": false, "why": "two adjacent characters swapped" },
        ],
    })
}

fn certificate_vectors(w: &World) -> Value {
    let cert = w.identity.certificate();
    let b = &cert.body;
    let other = SigningKey::from_bytes(&OTHER_AUTHORITY_SEED);
    let check = |anchor: &TrustAnchor, now_ms: i64| -> &'static str {
        match anchor.verify_certificate(cert, Timestamp(now_ms)) {
            Ok(_) => "valid",
            Err(e) => trust_error_name(&e),
        }
    };
    let mut tampered = cert.clone();
    tampered.body.key_group = 3;
    let tampered_result = match w.anchor.verify_certificate(&tampered, Timestamp(NOW_MS)) {
        Ok(_) => "valid",
        Err(e) => trust_error_name(&e),
    };
    let at = |now_ms: i64| json!({ "now_ms": now_ms, "expected": check(&w.anchor, now_ms) });
    json!({
        "description": "A host certificate signed by the authority (docs/PROTOCOL.md \"CertificateResponse\", \"Signatures\"). Seeds are Ed25519 secret seeds (RFC 8032).",
        "authority_seed": to_hex(&AUTHORITY_SEED),
        "authority_public_key": to_hex(&w.authority.verifying_key().to_bytes()),
        "authority_public_key_file": format!("tally-authority-public-key-v1 {}", to_hex(&w.authority.verifying_key().to_bytes())),
        "authority_id": to_hex(&b.authority_id),
        "host_seed": to_hex(&HOST_SEED),
        "host_public_key": to_hex(&w.host.verifying_key().to_bytes()),
        "fields": {
            "host_key": to_hex(&b.host_key),
            "key_group": b.key_group,
            "generation": b.generation,
            "key_serial": b.key_serial,
            "not_before": b.not_before,
            "not_after": b.not_after,
            "authority_id": to_hex(&b.authority_id),
        },
        "signed_message": to_hex(&b.signed_bytes()),
        "signature": to_hex(&cert.signature),
        "encoding": to_hex(&cert.to_bytes()),
        "fingerprint": to_hex(&w.identity.fingerprint()),
        "frame": to_hex(&Message::CertificateResponse(cert.clone()).encode()),
        "verify": [
            at(NOW_MS),
            at(b.not_before * 1000),
            at(b.not_before * 1000 - 1),
            at(b.not_after * 1000),
            at(b.not_after * 1000 + 1),
            {
                "now_ms": NOW_MS,
                "trusted_authority_public_key": to_hex(&other.verifying_key().to_bytes()),
                "expected": check(&TrustAnchor::new(other.verifying_key()), NOW_MS),
            },
            {
                "now_ms": NOW_MS,
                "note": "key_group changed to 3 after signing",
                "encoding": to_hex(&tampered.to_bytes()),
                "expected": tampered_result,
            },
        ],
    })
}

fn request_vectors(w: &World) -> Value {
    let r = &w.request;
    let mut trailing = w.request_frame.clone();
    trailing[1] += 1;
    trailing.push(0);
    let mut version3 = w.request_frame.clone();
    version3[2] = 3;
    let mut bad_state = w.request_frame.clone();
    bad_state[4 + 16 * 4 + 2] = 9;
    let undecodable: Vec<(&str, Vec<u8>)> = vec![
        ("length 0", vec![0x00, 0x00]),
        ("length 1", vec![0x00, 0x01, 0x01]),
        (
            "length 249: frame of 251 bytes, body never read",
            vec![0x00, 0xF9],
        ),
        ("length 65535", vec![0xFF, 0xFF]),
        ("version 3", version3),
        ("unknown kind 0x42", vec![0x00, 0x02, 0x01, 0x42]),
        (
            "a response kind sent to a host",
            vec![0x00, 0x06, 0x01, 0x05, 0, 0, 0, 0],
        ),
        (
            "activation request with an empty body",
            vec![0x00, 0x02, 0x01, 0x01],
        ),
        ("one trailing byte", trailing),
        ("license_state 9", bad_state),
    ];
    let cases: Vec<Value> = undecodable
        .into_iter()
        .map(|(name, frame)| {
            let code = error_for(&frame).expect("a whole frame or a refused prefix");
            // What the sans-I/O host answers, for those that reach it.
            json!({ "name": name, "frame": to_hex(&frame), "error": code_name(code), "code": format!("0x{:08X}", code.0) })
        })
        .collect();
    json!({
        "description": "An ActivationRequest frame (length prefix included) and its SHA-256, which the response signature covers; then undecodable frames with the Error code a host answers (docs/PROTOCOL.md \"Framing\").",
        "fields": {
            "nonce": to_hex(&r.nonce),
            "cmid": r.cmid.to_string(),
            "pool": r.pool.to_string(),
            "sku": r.sku.to_string(),
            "threshold": r.threshold,
            "license_state": r.license_state as u8,
            "grace_remaining_minutes": r.grace_remaining_minutes,
            "client_time": r.client_time,
            "sequence": r.ext.map(|e| e.sequence),
            "hardware_digest": r.ext.map(|e| to_hex(&e.hardware_digest)),
            "machine_name": r.machine_name.as_str(),
        },
        "frame": to_hex(&w.request_frame),
        "version_1_frame": to_hex(&Message::ActivationRequest(ActivationRequest { ext: None, ..r.clone() }).encode()),
        "frame_sha256": to_hex(&sha256(&w.request_frame)),
        "certificate_request_frame": to_hex(&Message::CertificateRequest.encode()),
        "undecodable": cases,
    })
}

fn response_vectors(w: &World) -> Value {
    let digest = sha256(&w.request_frame);
    let mut response = ActivationResponse {
        nonce: w.request.nonce,
        host_fingerprint: w.identity.fingerprint(),
        result: ResultCode::SUCCESS,
        count: 5,
        activation_interval_secs: 7_200,
        renewal_interval_secs: 604_800,
        host_time: NOW_MS + 3,
        revocation_serial: Some(0),
        signature: [0; 64],
    };
    w.identity.sign(&mut response, &digest);
    // A version-1 client's request and the version-1 answer a version-2 host gives it.
    let v1_request = Message::ActivationRequest(ActivationRequest {
        ext: None,
        ..w.request.clone()
    })
    .encode();
    let v1_digest = sha256(&v1_request);
    let mut v1_response = ActivationResponse {
        revocation_serial: None,
        ..response.clone()
    };
    w.identity.sign(&mut v1_response, &v1_digest);
    let verified = w
        .anchor
        .verify_certificate(w.identity.certificate(), Timestamp(NOW_MS))
        .unwrap();
    let catalog = Catalog::demo();
    let verify = |resp: &ActivationResponse, digest: &[u8; 32], sku: Uuid| -> &'static str {
        let edition = catalog.edition(sku).unwrap();
        match verified.verify_response(resp, digest, &w.request.nonce, edition) {
            Ok(()) => "valid",
            Err(e) => trust_error_name(&e),
        }
    };
    let sku = w.request.sku;
    let mut altered = response.clone();
    altered.count = 25;
    let mut replayed = response.clone();
    replayed.nonce[0] ^= 1;
    w.identity.sign(&mut replayed, &digest);
    let mut other_request = w.request_frame.clone();
    let last = other_request.len() - 1;
    other_request[last] ^= 0x01; // the machine name's last character
    let other_digest = sha256(&other_request);
    // Server Datacenter needs group Server C (3): this Server A host's count does not cover it.
    let datacenter = Uuid::parse_str("5c000000-0000-4000-8000-000000000005").unwrap();
    let mut refusal = response.clone();
    refusal.result = ResultCode::EDITION_NOT_COVERED;
    refusal.count = 0;
    w.identity.sign(&mut refusal, &digest);
    let frame = |r: &ActivationResponse| to_hex(&Message::ActivationResponse(r.clone()).encode());
    json!({
        "description": "Signed ActivationResponses to the request of request.json, from the host of certificate.json, and whether a client accepts each (docs/PROTOCOL.md \"Signatures\"; verification at request.json's client_time).",
        "fields": {
            "nonce": to_hex(&response.nonce),
            "host_fingerprint": to_hex(&response.host_fingerprint),
            "result": response.result.0,
            "count": response.count,
            "activation_interval": response.activation_interval_secs,
            "renewal_interval": response.renewal_interval_secs,
            "host_time": response.host_time,
            "revocation_serial": response.revocation_serial,
        },
        "request_frame_sha256": to_hex(&digest),
        "signed_message": to_hex(&response.signed_bytes(&digest)),
        "signature": to_hex(&response.signature),
        "frame": frame(&response),
        "cases": [
            { "name": "genuine, for Acme Server Web 2026 (server-a)", "frame": frame(&response), "sku": sku.to_string(), "expected": verify(&response, &digest, sku) },
            { "name": "count changed to 25 after signing", "frame": frame(&altered), "sku": sku.to_string(), "expected": verify(&altered, &digest, sku) },
            { "name": "another request's nonce (re-signed)", "frame": frame(&replayed), "sku": sku.to_string(), "expected": verify(&replayed, &digest, sku) },
            { "name": "checked against an altered request frame", "frame": frame(&response), "sku": sku.to_string(), "request_frame_sha256": to_hex(&other_digest), "expected": verify(&response, &other_digest, sku) },
            { "name": "a count for an edition the host does not cover (server-c)", "frame": frame(&response), "sku": datacenter.to_string(), "expected": verify(&response, &digest, datacenter) },
            { "name": "a signed refusal for that edition", "frame": frame(&refusal), "sku": datacenter.to_string(), "expected": verify(&refusal, &digest, datacenter) },
        ],
        "version_1": {
            "description": "request.json's version_1_frame and the version-1 response a version-2 host answers it with (no revocation_serial; signing context tally/v1/activation-response).",
            "request_frame_sha256": to_hex(&v1_digest),
            "signed_message": to_hex(&v1_response.signed_bytes(&v1_digest)),
            "frame": frame(&v1_response),
            "expected": verify(&v1_response, &v1_digest, sku),
        },
    })
}

/// X7: a signed revocation list, its file form, its verification outcomes, and the document
/// frames that carry it from a host in chunks.
fn revocation_vectors(w: &World) -> Value {
    use tally_core::revocation::{RevocationError, VerifiedList};
    use tally_proto::revocation::{Entry, Reason, Subject};
    use tally_proto::{DocumentChunk, DocumentKind, DocumentRequest};
    let fp = tally_core::trust::fingerprint(w.identity.certificate());
    let entries = vec![
        Entry {
            subject: Subject::Certificate(fp),
            reason: Reason::KeyCompromise,
            revoked_at: NOW_MS,
        },
        Entry {
            subject: Subject::HostKey(7),
            reason: Reason::Superseded,
            revoked_at: NOW_MS + 1,
        },
        Entry {
            subject: Subject::Mak(9),
            reason: Reason::Withdrawn,
            revoked_at: NOW_MS + 2,
        },
    ];
    let sign = |key: &SigningKey, serial: u32| {
        tally_core::revocation::build::<std::convert::Infallible>(
            &key.verifying_key(),
            serial,
            Timestamp(NOW_MS + 2),
            entries.clone(),
            |m| Ok(ed25519_dalek::Signer::sign(key, m).to_bytes()),
        )
        .unwrap()
        .unwrap()
    };
    let list = sign(&w.authority, 3);
    let foreign = sign(&SigningKey::from_bytes(&OTHER_AUTHORITY_SEED), 3);
    let mut tampered = list.bytes().to_vec();
    tampered[12] ^= 1; // the serial's last byte
    let outcome = |bytes: &[u8]| match VerifiedList::verify(bytes, &w.anchor) {
        Ok(_) => "valid",
        Err(RevocationError::UnknownAuthority) => "unknown_authority",
        Err(RevocationError::BadSignature) => "bad_signature",
        Err(_) => "damaged",
    };
    let request = Message::DocumentRequest(DocumentRequest {
        doc: DocumentKind::RevocationList,
        offset: 0,
    })
    .encode();
    let chunk = Message::DocumentChunk(DocumentChunk::of(
        DocumentKind::RevocationList,
        3,
        list.bytes(),
        0,
    ))
    .encode();
    json!({
        "description": "X7: the authority's revocation list (format 1): entries for the certificate in certificate.json (by fingerprint), host key serial 7 and MAK serial 9; serial 3. Signed message = \"tally/v1/revocation-list\\0\" || every byte before the signature. Then the version-2 document frames that fetch it from a host.",
        "authority_public_key": to_hex(w.authority.verifying_key().as_bytes()),
        "list": to_hex(list.bytes()),
        "signed_message": to_hex(&list.list().signed_bytes()),
        "file": list.to_file_text(),
        "revokes_vector_certificate": list.revokes_certificate(w.identity.certificate()).is_some(),
        "cases": [
            { "name": "valid", "list": to_hex(list.bytes()), "expected": outcome(list.bytes()) },
            { "name": "serial altered", "list": to_hex(&tampered), "expected": outcome(&tampered) },
            { "name": "signed by another authority", "list": to_hex(foreign.bytes()), "expected": outcome(foreign.bytes()) },
        ],
        "document_request_offset_0": to_hex(&request),
        "first_chunk": to_hex(&chunk),
    })
}

fn check_or_bless(name: &str, value: &Value) {
    let path = dir().join(name);
    let text = serde_json::to_string_pretty(value).unwrap() + "\n";
    if std::env::var_os("TALLY_BLESS").is_some() {
        std::fs::create_dir_all(dir()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} drifted from what the code generates: run `TALLY_BLESS=1 cargo test -p tally-client --test vectors` and review the diff",
        path.display()
    );
}

#[test]
fn published_vectors_match_the_code() {
    let w = world();
    let keys = keys_vectors();
    let cert = certificate_vectors(&w);
    let req = request_vectors(&w);
    let resp = response_vectors(&w);
    // The expectations the documentation states, so a regression in the code cannot simply
    // be blessed into the files.
    let verify = &cert["verify"];
    let expected = [
        "valid",
        "valid",
        "certificate_not_valid_now",
        "valid",
        "certificate_not_valid_now",
        "unknown_authority",
        "bad_certificate_signature",
    ];
    for (i, e) in expected.iter().enumerate() {
        assert_eq!(verify[i]["expected"], *e, "certificate case {i}");
    }
    let errors: Vec<&str> = req["undecodable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["error"].as_str().unwrap())
        .collect();
    assert_eq!(
        errors,
        [
            "malformed_request",
            "malformed_request",
            "frame_too_large",
            "frame_too_large",
            "unsupported_version",
            "malformed_request",
            "malformed_request",
            "malformed_request",
            "malformed_request",
            "malformed_request",
        ]
    );
    let outcomes: Vec<&str> = resp["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["expected"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "valid",
            "bad_response_signature",
            "nonce_mismatch",
            "bad_response_signature",
            "group_does_not_cover",
            "valid",
        ]
    );
    // The response frames decode back to what was signed.
    let frame = tally_core::hex::from_hex(resp["frame"].as_str().unwrap()).unwrap();
    assert_eq!(frame.len(), 144, "version 2: revocation_serial");
    assert!(matches!(
        Message::decode(&frame),
        Ok(Message::ActivationResponse(_))
    ));
    // X6: a version-1 client still gets a version-1 answer it can verify.
    assert_eq!(resp["version_1"]["expected"], "valid");
    let v1 = tally_core::hex::from_hex(resp["version_1"]["frame"].as_str().unwrap()).unwrap();
    assert_eq!((v1.len(), v1[2]), (140, 1));
    check_or_bless("keys.json", &keys);
    check_or_bless("certificate.json", &cert);
    check_or_bless("request.json", &req);
    check_or_bless("response.json", &resp);
    let rev = revocation_vectors(&w);
    let outcomes: Vec<&str> = rev["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["expected"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["valid", "bad_signature", "unknown_authority"]);
    assert_eq!(rev["revokes_vector_certificate"], true);
    let chunk = tally_core::hex::from_hex(rev["first_chunk"].as_str().unwrap()).unwrap();
    assert!(chunk.len() <= tally_proto::MAX_FRAME);
    check_or_bless("revocation.json", &rev);
}
