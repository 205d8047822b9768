//! Size tests (R15: the largest message of each kind fits in [`MAX_FRAME`]), round trips,
//! version-1 compatibility and rejection of undecodable input.

use proptest::prelude::*;

use super::*;
use crate::FrameError;

fn largest_request() -> ActivationRequest {
    ActivationRequest {
        nonce: [0xFF; 16],
        cmid: Uuid::from_bytes([0xFF; 16]),
        pool: Uuid::from_bytes([0xFF; 16]),
        sku: Uuid::from_bytes([0xFF; 16]),
        threshold: u16::MAX,
        license_state: LicenseState::OutOfTolerance,
        grace_remaining_minutes: u32::MAX,
        client_time: i64::MAX,
        ext: Some(RequestExt {
            sequence: u32::MAX,
            hardware_digest: [0xFF; 8],
        }),
        // 25 four-byte characters: 100 bytes, the longest a name can be.
        machine_name: MachineName::new(&"🦀".repeat(25)).expect("100 bytes is allowed"),
    }
}

fn response() -> ActivationResponse {
    ActivationResponse {
        nonce: [7; 16],
        host_fingerprint: [9; 32],
        result: ResultCode::SUCCESS,
        count: u32::MAX,
        activation_interval_secs: 7200,
        renewal_interval_secs: 604_800,
        host_time: 1_700_000_000_000,
        revocation_serial: Some(u32::MAX),
        signature: [3; 64],
    }
}

fn certificate() -> HostCertificate {
    HostCertificate {
        body: CertificateBody {
            host_key: [1; 32],
            key_group: 3,
            generation: 2,
            key_serial: 77,
            not_before: 10,
            not_after: 20,
            authority_id: [5; 8],
        },
        signature: [8; 64],
    }
}

// R15: every request and response is at most 250 bytes.
#[test]
fn r15_largest_messages_fit_in_250_bytes() {
    let req = Message::ActivationRequest(largest_request()).encode();
    let resp = Message::ActivationResponse(response()).encode();
    let cert = Message::CertificateResponse(certificate()).encode();
    let err = Message::Error(ErrorMessage {
        result: ResultCode(u32::MAX),
    })
    .encode();
    let doc_req = Message::DocumentRequest(DocumentRequest {
        doc: crate::DocumentKind::RootRollover,
        offset: u32::MAX,
    })
    .encode();
    let chunk = Message::DocumentChunk(DocumentChunk::of(
        crate::DocumentKind::RevocationList,
        u32::MAX,
        &[0xAB; 1000],
        0,
    ))
    .encode();
    for (name, bytes) in [
        ("request", &req),
        ("response", &resp),
        ("certificate", &cert),
        ("error", &err),
        ("document request", &doc_req),
        ("document chunk", &chunk),
    ] {
        assert!(bytes.len() <= MAX_FRAME, "{name} is {} bytes", bytes.len());
    }
    assert_eq!(req.len(), 4 + 80 + 12 + 100);
    assert_eq!(resp.len(), 4 + 140);
    assert_eq!(chunk.len(), 4 + 14 + 224);
    // X7: documents round-trip, and exist only from version 2 on.
    assert!(
        matches!(Message::decode(&chunk), Ok(Message::DocumentChunk(c)) if c.data.len() == 224)
    );
    let mut v1 = doc_req.clone();
    v1[2] = 1;
    assert!(Message::decode(&v1).is_err());
}

// R15 + X6: a version-1 request still decodes (as a request without version 2's fields),
// and the version-1 response answering it keeps the version-1 layout and signing context.
#[test]
fn version_1_frames_decode_and_answer_in_version_1() {
    let mut v1 = largest_request();
    v1.ext = None;
    let bytes = Message::ActivationRequest(v1.clone()).encode();
    assert_eq!(bytes[2], 1);
    assert_eq!(bytes.len(), 4 + 80 + 100);
    assert_eq!(Message::decode(&bytes), Ok(Message::ActivationRequest(v1)));
    let mut resp = response();
    resp.revocation_serial = None;
    let bytes = Message::ActivationResponse(resp.clone()).encode();
    assert_eq!((bytes[2], bytes.len()), (1, 4 + 136));
    assert!(
        resp.signed_bytes(&[0; 32])
            .starts_with(ActivationResponse::SIGNING_CONTEXT)
    );
    assert!(
        response()
            .signed_bytes(&[0; 32])
            .starts_with(ActivationResponse::SIGNING_CONTEXT_V2)
    );
    let err = Message::Error(ErrorMessage {
        result: ResultCode::HOST_BUSY,
    });
    assert_eq!(err.encode_as(1)[2], 1);
    assert_eq!(err.encode()[2], PROTOCOL_VERSION);
    assert_eq!(Message::decode(&err.encode_as(1)), Ok(err));
}

#[test]
fn r15_round_trip_each_kind() {
    for msg in [
        Message::ActivationRequest(largest_request()),
        Message::ActivationResponse(response()),
        Message::CertificateRequest,
        Message::CertificateResponse(certificate()),
        Message::Error(ErrorMessage {
            result: ResultCode::HOST_BUSY,
        }),
    ] {
        let bytes = msg.encode();
        assert_eq!(Frame::check(&bytes), Ok(Some(bytes.len())));
        assert_eq!(Message::decode(&bytes), Ok(msg));
    }
}

#[test]
fn r15_oversized_length_prefix_is_refused_before_reading() {
    assert_eq!(Frame::check(&[0x00, 0xF9]), Err(FrameError::TooLarge(251)));
    assert_eq!(
        Frame::check(&[0xFF, 0xFF]),
        Err(FrameError::TooLarge(65537))
    );
    assert_eq!(Frame::check(&[0x00, 0xF8]), Ok(None));
    assert_eq!(Frame::check(&[0x00, 0x01, 0]), Err(FrameError::TooShort(3)));
    assert_eq!(Frame::check(&[0x00]), Ok(None));
}

#[test]
fn each_undecodable_input_gets_its_documented_code() {
    // docs/PROTOCOL.md "Which Error code": only a length over 248 is frame_too_large.
    let code = |bytes: &[u8]| match Frame::check(bytes) {
        Err(e) => e.result_code(),
        Ok(_) => Message::decode(bytes)
            .err()
            .map_or(ResultCode::SUCCESS, |e| e.result_code()),
    };
    assert_eq!(code(&[0x00, 0x00]), ResultCode::MALFORMED_REQUEST);
    assert_eq!(code(&[0x00, 0x01, 0x01]), ResultCode::MALFORMED_REQUEST);
    assert_eq!(code(&[0x00, 0xF9]), ResultCode::FRAME_TOO_LARGE);
    assert_eq!(code(&[0xFF, 0xFF]), ResultCode::FRAME_TOO_LARGE);
    assert_eq!(
        code(&[0x00, 0x02, 0x03, 0x03]),
        ResultCode::UNSUPPORTED_VERSION
    );
    assert_eq!(
        code(&[0x00, 0x02, 0x00, 0x03]),
        ResultCode::UNSUPPORTED_VERSION
    );
    assert_eq!(
        code(&[0x00, 0x02, 0x01, 0x42]),
        ResultCode::MALFORMED_REQUEST
    );
    assert_eq!(
        code(&[0x00, 0x03, 0x01, 0x03, 0x00]),
        ResultCode::MALFORMED_REQUEST
    );
    assert_eq!(
        code(&[0x00, 0x02, 0x01, 0x01]),
        ResultCode::MALFORMED_REQUEST
    );
    assert_eq!(code(&[0x00, 0x02, 0x01, 0x03]), ResultCode::SUCCESS);
}

#[test]
fn trailing_bytes_and_bad_fields_are_rejected() {
    let mut bytes = Message::Error(ErrorMessage {
        result: ResultCode::HOST_BUSY,
    })
    .encode();
    bytes.push(0);
    bytes[1] += 1;
    assert_eq!(Message::decode(&bytes), Err(DecodeError::TrailingData(1)));

    let mut bytes = Message::CertificateRequest.encode();
    bytes[2] = 9;
    assert_eq!(
        Message::decode(&bytes),
        Err(DecodeError::UnsupportedVersion(9))
    );
    bytes[2] = PROTOCOL_VERSION;
    bytes[3] = 0x42;
    assert_eq!(Message::decode(&bytes), Err(DecodeError::UnknownKind(0x42)));

    assert!(MachineName::new("a\nb").is_err());
    assert!(MachineName::new("").is_err());
    assert!(MachineName::new(&"x".repeat(101)).is_err());
    assert_eq!(MachineName::lossy(&"é".repeat(80)).as_str().len(), 100);
    assert_eq!(MachineName::lossy("a\tb").as_str(), "a?b");
}

proptest! {
    // Decoding arbitrary bytes never panics, and whatever decodes round-trips exactly.
    #[test]
    fn decode_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        crate::fuzzing::fuzz_message(&data);
    }

    // Structured inputs: valid headers with random bodies reach the field decoders.
    #[test]
    fn decode_random_bodies(kind in 1u8..=6, body in proptest::collection::vec(any::<u8>(), 0..246)) {
        let mut frame = ((body.len() + 2) as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&[PROTOCOL_VERSION, kind]);
        frame.extend_from_slice(&body);
        crate::fuzzing::fuzz_message(&frame);
    }

    #[test]
    fn request_round_trip(nonce in any::<[u8; 16]>(), cmid in any::<[u8; 16]>(), threshold in any::<u16>(),
                          grace in any::<u32>(), time in any::<i64>(), name in "[a-zA-Z0-9.-]{1,100}") {
        let msg = Message::ActivationRequest(ActivationRequest {
            nonce, cmid: Uuid::from_bytes(cmid), pool: Uuid::from_bytes(nonce), sku: Uuid::nil(),
            threshold, license_state: LicenseState::InitialGrace, grace_remaining_minutes: grace,
            client_time: time, ext: Some(RequestExt { sequence: grace, hardware_digest: [1; 8] }), machine_name: MachineName::new(&name).expect("generated names are valid"),
        });
        prop_assert_eq!(Message::decode(&msg.encode()), Ok(msg));
    }
}
