//! Tests of the host session: counting through the session (R3, R4), intervals and binding
//! (R9, R16), coverage (R21), revocation relay (X7), the bench edition, hostile frames.

use ed25519_dalek::SigningKey;
use tally_proto::{CertificateBody, LicenseState, MachineName};
use uuid::Uuid;

use super::*;
use crate::catalog::EditionKind;
use crate::counting::CountTables;
use crate::keys::KeyGroup;
use crate::time::{Clock, ManualClock};
use crate::trust::{TrustAnchor, TrustError, authority_id, generate_key, sign_certificate};

struct Fixture {
    session: HostSession,
    anchor: TrustAnchor,
    tables: std::sync::Mutex<CountTables>,
    clock: ManualClock,
    catalog: Arc<Catalog>,
    authority: SigningKey,
}

fn fixture(group: KeyGroup) -> Fixture {
    let authority = generate_key();
    let host = generate_key();
    let clock = ManualClock::new(Timestamp(1_800_000_000_000));
    let cert = sign_certificate(
        &authority,
        CertificateBody {
            host_key: host.verifying_key().to_bytes(),
            key_group: group.rank(),
            generation: 1,
            key_serial: 1,
            not_before: 0,
            not_after: i64::MAX / 1000,
            authority_id: authority_id(&authority.verifying_key()),
        },
    );
    let catalog = Arc::new(Catalog::demo());
    let identity = HostIdentity::new(host, cert).expect("matching key");
    Fixture {
        session: HostSession::new(
            Arc::clone(&catalog),
            identity,
            Intervals {
                activation_secs: 7,
                renewal_secs: 99,
            },
        ),
        anchor: TrustAnchor::new(authority.verifying_key()),
        tables: std::sync::Mutex::new(CountTables::default()),
        clock,
        catalog,
        authority,
    }
}

fn revocation_list(
    f: &Fixture,
    serial: u32,
    entries: Vec<tally_proto::revocation::Entry>,
) -> Arc<Held> {
    use ed25519_dalek::Signer;
    let list = crate::revocation::build::<std::convert::Infallible>(
        &f.authority.verifying_key(),
        serial,
        Timestamp(5),
        entries,
        |m| Ok(f.authority.sign(m).to_bytes()),
    )
    .unwrap_or_else(|e| match e {})
    .expect("fits");
    Arc::new(Held::new(Some(list)))
}

// X7: the host names its list's serial in version-2 answers, relays the list in chunks
// that reassemble to the signed bytes, and once the list revokes its own certificate it
// answers no activation (host_revoked), while still relaying the list.
#[test]
fn x7_a_host_relays_its_list_and_stops_when_revoked() {
    use tally_proto::revocation::{Entry, Reason, Subject};
    let f = fixture(KeyGroup::ServerC);
    let e = edition(&f, EditionKind::Server, KeyGroup::ServerA);
    let other = revocation_list(
        &f,
        3,
        vec![Entry {
            subject: Subject::HostKey(99),
            reason: Reason::KeyCompromise,
            revoked_at: 1,
        }],
    );
    let session = f.session.with_revocations(Arc::clone(&other));
    assert!(session.revoked().is_none());
    let (frame, _) = request(1, &e);
    let Outcome::Activation(p) = session.handle(&frame, f.clock.now()) else {
        panic!("an activation")
    };
    assert_eq!(p.response.revocation_serial, Some(3));

    let mut assembler = tally_proto::document::Assembler::new(DocumentKind::RevocationList);
    let whole = loop {
        let req = Message::DocumentRequest(assembler.next_request()).encode();
        let Outcome::Reply(bytes) = session.handle(&req, f.clock.now()) else {
            panic!("a chunk")
        };
        let Ok(Message::DocumentChunk(chunk)) = Message::decode(&bytes) else {
            panic!("a chunk frame")
        };
        if let Some(done) = assembler.push(chunk).expect("in order") {
            break done;
        }
    };
    assert_eq!(whole.0, 3);
    let verified = crate::revocation::VerifiedList::verify(&whole.1, &f.anchor).expect("signed");
    assert_eq!(Some(&verified), other.list());

    let own = revocation_list(
        &f,
        4,
        vec![Entry {
            subject: Subject::HostKey(1),
            reason: Reason::KeyCompromise,
            revoked_at: 1,
        }],
    );
    let revoked = session.with_revocations(own);
    assert_eq!(
        revoked.revoked().map(|e| e.reason),
        Some(Reason::KeyCompromise)
    );
    let Outcome::Reply(bytes) = revoked.handle(&frame, f.clock.now()) else {
        panic!("an error reply")
    };
    assert_eq!(
        Message::decode(&bytes),
        Ok(Message::Error(ErrorMessage {
            result: ResultCode::HOST_REVOKED
        }))
    );
}

fn edition(f: &Fixture, kind: EditionKind, group: KeyGroup) -> crate::Edition {
    f.catalog
        .editions()
        .iter()
        .find(|e| e.kind == kind && e.group == group)
        .cloned()
        .expect("demo catalog has it")
}

fn request(cmid: u128, e: &crate::Edition) -> (Vec<u8>, ActivationRequest) {
    let req = ActivationRequest {
        nonce: [cmid as u8; 16],
        cmid: Uuid::from_u128(cmid),
        pool: e.pool,
        sku: e.sku,
        threshold: e.threshold,
        license_state: LicenseState::InitialGrace,
        grace_remaining_minutes: 100,
        client_time: 0,
        ext: Some(tally_proto::RequestExt {
            sequence: 1,
            hardware_digest: [0; 8],
        }),
        machine_name: MachineName::lossy(&format!("pc{cmid}")),
    };
    (Message::ActivationRequest(req.clone()).encode(), req)
}

/// Sends one request through the session and verifies the answer as a client would.
fn activate(f: &Fixture, cmid: u128, e: &crate::Edition) -> (ActivationResponse, Changes) {
    let (frame, req) = request(cmid, e);
    let Outcome::Activation(mut pending) = f.session.handle(&frame, f.clock.now()) else {
        panic!("expected an activation outcome");
    };
    // What a store does inside its transaction.
    let count = match &pending.changes.counting {
        Some(req) => f.tables.lock().expect("lock").apply(req).0,
        None => 0,
    };
    pending.changes.settle(count);
    let bytes = f.session.seal(&pending, count);
    let Ok(Message::ActivationResponse(resp)) = Message::decode(&bytes) else {
        panic!("expected a response");
    };
    let host = f
        .anchor
        .verify_certificate(f.session.identity().certificate(), f.clock.now())
        .expect("cert");
    host.verify_response(&resp, &sha256(&frame), &req.nonce, e)
        .expect("response verifies");
    (resp, pending.changes)
}

// The bench edition: unknown to a host that does not accept it; counted in its own pool
// (never a real one) by a host that does, with the same path as a real edition.
#[test]
fn the_bench_edition_is_answered_only_when_accepted_and_counts_in_its_own_pool() {
    let mut f = fixture(KeyGroup::ClientVl);
    let mut bench = edition(&f, EditionKind::Server, KeyGroup::ServerA);
    bench.sku = crate::bench::SKU;
    bench.pool = crate::bench::POOL;
    let (frame, _) = request(1, &bench);
    let Outcome::Activation(pending) = f.session.handle(&frame, f.clock.now()) else {
        panic!("expected an activation outcome");
    };
    assert_eq!(pending.response.result, ResultCode::UNKNOWN_EDITION);
    assert!(pending.changes.counting.is_none());

    f.session = f.session.accepting_bench(true);
    let counted = f.session.handle(&frame, f.clock.now());
    let Outcome::Activation(pending) = counted else {
        panic!("expected an activation outcome");
    };
    assert_eq!(pending.response.result, ResultCode::SUCCESS);
    let req = pending.changes.counting.expect("counted");
    assert_eq!(
        (req.pool, req.threshold),
        (crate::bench::POOL, crate::bench::THRESHOLD)
    );
    // A bench request naming a real pool is refused like any pool mismatch.
    bench.pool = edition(&f, EditionKind::Server, KeyGroup::ServerA).pool;
    let (frame, _) = request(2, &bench);
    let Outcome::Activation(pending) = f.session.handle(&frame, f.clock.now()) else {
        panic!("expected an activation outcome");
    };
    assert_eq!(pending.response.result, ResultCode::POOL_MISMATCH);
}

// R3 through the session: clients 1, 2, 3; a server at 4 (below 5); a server at 5.
#[test]
fn r3_counts_across_kinds_through_the_session() {
    let f = fixture(KeyGroup::ServerC);
    let client = edition(&f, EditionKind::Client, KeyGroup::ClientVl);
    let server = edition(&f, EditionKind::Server, KeyGroup::ServerA);
    let counts: Vec<(u32, bool)> = [
        (1, &client),
        (2, &client),
        (3, &client),
        (4, &server),
        (5, &server),
    ]
    .into_iter()
    .map(|(n, e)| {
        let (resp, changes) = activate(&f, n, e);
        (resp.count, changes.registry.activated)
    })
    .collect();
    assert_eq!(
        counts,
        vec![(1, false), (2, false), (3, false), (4, false), (5, true)]
    );
}

// R4 on a fake clock: entries lapse after 30 days without renewal.
#[test]
fn r4_counts_drop_after_30_days_on_a_fake_clock() {
    let f = fixture(KeyGroup::ServerC);
    let server = edition(&f, EditionKind::Server, KeyGroup::ServerB);
    for n in 1..=5 {
        activate(&f, n, &server);
    }
    f.clock.advance_days(20);
    assert_eq!(activate(&f, 1, &server).0.count, 5); // renewal: no rise
    f.clock.advance_days(11); // day 31: 2..5 lapsed; 1 was renewed on day 20
    assert_eq!(activate(&f, 6, &server).0.count, 2);
}

// R9: the host's intervals are in every response, and R16: it is signed over the request.
#[test]
fn r9_r16_intervals_sent_and_response_bound_to_request() {
    let f = fixture(KeyGroup::ServerC);
    let e = edition(&f, EditionKind::Client, KeyGroup::ClientVl);
    let (resp, _) = activate(&f, 1, &e);
    assert_eq!(
        (resp.activation_interval_secs, resp.renewal_interval_secs),
        (7, 99)
    );
    // The same response does not verify for another request (different digest and nonce).
    let (frame2, req2) = request(2, &e);
    let host = f
        .anchor
        .verify_certificate(f.session.identity().certificate(), f.clock.now())
        .expect("cert");
    assert_eq!(
        host.verify_response(&resp, &sha256(&frame2), &req2.nonce, &e),
        Err(TrustError::NonceMismatch)
    );
    let mut tampered = resp.clone();
    tampered.count = 25;
    let (frame1, req1) = request(1, &e);
    assert_eq!(
        host.verify_response(&tampered, &sha256(&frame1), &req1.nonce, &e),
        Err(TrustError::BadResponseSignature)
    );
}

// R21: a host whose group does not cover the edition answers a signed refusal, not a count;
// R6: the refusal is still in the registry.
#[test]
fn r21_uncovered_edition_gets_signed_refusal_and_r6_registry_keeps_it() {
    let f = fixture(KeyGroup::ServerA);
    let dc = edition(&f, EditionKind::Server, KeyGroup::ServerC);
    let (resp, changes) = activate(&f, 1, &dc);
    assert_eq!(resp.result, ResultCode::EDITION_NOT_COVERED);
    assert_eq!(resp.count, 0);
    assert!(changes.counting.is_none(), "nothing counted");
    assert_eq!(changes.registry.result, ResultCode::EDITION_NOT_COVERED);
    // Lower groups are served.
    let web = edition(&f, EditionKind::Server, KeyGroup::ServerA);
    assert_eq!(activate(&f, 2, &web).0.count, 1);
}

#[test]
fn unknown_edition_and_pool_mismatch_are_refused() {
    let f = fixture(KeyGroup::ServerC);
    let mut e = edition(&f, EditionKind::Client, KeyGroup::ClientVl);
    e.pool = Uuid::from_u128(5);
    let (frame, _) = request(1, &e);
    let Outcome::Activation(p) = f.session.handle(&frame, f.clock.now()) else {
        panic!("activation")
    };
    assert_eq!(p.response.result, ResultCode::POOL_MISMATCH);
    e.sku = Uuid::from_u128(6);
    let (frame, _) = request(1, &e);
    let Outcome::Activation(p) = f.session.handle(&frame, f.clock.now()) else {
        panic!("activation")
    };
    assert_eq!(p.response.result, ResultCode::UNKNOWN_EDITION);
}

#[test]
fn garbage_frames_close_with_an_error_frame() {
    let f = fixture(KeyGroup::ServerC);
    let Outcome::Close { reply, .. } = f.session.handle(&[0, 2, 1, 0x42], f.clock.now()) else {
        panic!("close")
    };
    assert_eq!(
        Message::decode(&reply),
        Ok(Message::Error(tally_proto::ErrorMessage {
            result: ResultCode::MALFORMED_REQUEST
        }))
    );
    let Outcome::Reply(cert) = f
        .session
        .handle(&Message::CertificateRequest.encode(), f.clock.now())
    else {
        panic!("certificate")
    };
    assert!(matches!(
        Message::decode(&cert),
        Ok(Message::CertificateResponse(_))
    ));
}

#[test]
fn a_certificate_for_another_key_is_refused() {
    let f = fixture(KeyGroup::ServerC);
    let other = SigningKey::from_bytes(&[9; 32]);
    assert_eq!(
        HostIdentity::new(other, f.session.identity().certificate().clone()).err(),
        Some(crate::trust::IdentityError::KeyMismatch)
    );
}
