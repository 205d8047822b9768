//! The host's session logic, sans-I/O: bytes in, bytes (and changes to persist) out.
//!
//! The server calls [`HostSession::handle`] with one frame; for an activation request it gets
//! a [`PendingActivation`]: the unsigned response and the [`Changes`] the store must make
//! durable before the response may be sent (commit before answering).
//!
//! The session decides *whether* a request is counted (edition known, pool matches, R21
//! coverage) but does not count it: the count is taken by the store inside the transaction that
//! makes it durable ([`CountTables::apply`] on the table as stored), so a count given to a client
//! only ever includes machines whose rows are durable in the same or an earlier commit, a failed
//! commit leaves nothing behind, and hosts sharing one database count as one (X1). The store's
//! answer ([`Counted`]) then goes into the response, which [`HostSession::seal`] signs.

use std::sync::Arc;

use tally_proto::revocation::Entry;
use tally_proto::{
    ActivationRequest, ActivationResponse, DecodeError, DocumentChunk, DocumentKind, ErrorMessage,
    LicenseState, Message, ResultCode,
};
use uuid::Uuid;

use crate::bench;
use crate::catalog::Catalog;
use crate::counting::CountTables;
use crate::revocation::Held;
use crate::time::Timestamp;
use crate::trust::{HostIdentity, sha256};

/// R8 default: retry a failed activation every 120 minutes.
pub const DEFAULT_ACTIVATION_INTERVAL_SECS: u32 = 120 * 60;
/// R8 default: renew every 10080 minutes (7 days).
pub const DEFAULT_RENEWAL_INTERVAL_SECS: u32 = 10_080 * 60;

/// Settings the host sends in every response (R9). Seconds on the wire, so a host can set
/// intervals shorter than a minute (tests, labs); admins set them in minutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Intervals {
    /// Seconds between retries after a failure (R8).
    pub activation_secs: u32,
    /// Seconds between renewals (R8).
    pub renewal_secs: u32,
}

impl Default for Intervals {
    fn default() -> Self {
        Self {
            activation_secs: DEFAULT_ACTIVATION_INTERVAL_SECS,
            renewal_secs: DEFAULT_RENEWAL_INTERVAL_SECS,
        }
    }
}

/// The durable registry's record of one request (R6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryUpdate {
    /// The client.
    pub cmid: Uuid,
    /// Its machine name.
    pub machine_name: String,
    /// The edition it asked for.
    pub sku: Uuid,
    /// The pool it named.
    pub pool: Uuid,
    /// The license state it reported.
    pub license_state: LicenseState,
    /// When.
    pub seen_at: Timestamp,
    /// The result the host gave.
    pub result: ResultCode,
    /// The count the host gave (0 on error).
    pub count: u32,
    /// Whether the count reached the edition's threshold.
    pub activated: bool,
    /// The requester's address, when the I/O layer knows it (R27).
    pub peer: Option<String>,
    /// Version 2's installation fields (X6): the request's sequence and hardware digest. A
    /// store that has seen this CMID send this sequence or a later one (another installation
    /// presents the CMID) reports a clone.
    pub installation: Option<tally_proto::RequestExt>,
}

/// A request to count one client in its pool's table (R2–R5), applied by the store in commit
/// order with [`CountTables::apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountRequest {
    /// The pool.
    pub pool: Uuid,
    /// The client.
    pub cmid: Uuid,
    /// The edition's threshold from the host's catalog (R5 sizes the table from it, never from
    /// the client's claim).
    pub threshold: u16,
    /// When the host received the request.
    pub at: Timestamp,
}

/// What the store answers for one committed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counted {
    /// The count (R2: requester included); 0 when the request was not counted.
    pub count: u32,
    /// Whether the count reached the edition's threshold.
    pub activated: bool,
    /// The time the store counted it at: the request's time, or the database's clock in a fleet
    /// (X5). The signed response carries it as `host_time`.
    pub at: Timestamp,
    /// X6: the store saw another installation present this CMID. Under
    /// [`crate::clones::ClonePolicy::Apart`] nothing was counted (`count` 0) and the answer is
    /// `clone_detected`.
    pub clone: bool,
}

/// Everything one request changes, persisted in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes {
    /// What to count, if the request is to be counted (a refusal counts nothing).
    pub counting: Option<CountRequest>,
    /// The registry record (R6). Its `count` and `activated` are filled in by
    /// [`Changes::settle`] once the store has counted.
    pub registry: RegistryUpdate,
    /// X6: what the store does when another installation presents this CMID.
    pub clone_policy: crate::clones::ClonePolicy,
}

impl Changes {
    /// Puts the request at `at` (the clock the store counts on, X5): its count, registry row
    /// and event are stamped with it.
    pub fn restamp(&mut self, at: Timestamp) {
        if let Some(c) = &mut self.counting {
            c.at = at;
        }
        self.registry.seen_at = at;
    }

    /// Records the store's count in the registry update and says what it means.
    pub fn settle(&mut self, count: u32) -> Counted {
        let activated = match &self.counting {
            Some(c) => c.threshold > 0 && count >= u32::from(c.threshold),
            None => false,
        };
        self.registry.count = count;
        self.registry.activated = activated;
        Counted {
            count,
            activated,
            at: self.registry.seen_at,
            clone: false,
        }
    }
}

impl CountTables {
    /// Counts one request (see [`crate::counting::PoolTable::record`]) and returns the count and
    /// the table change to persist.
    pub fn apply(&mut self, req: &CountRequest) -> (u32, crate::counting::TableChange) {
        self.record(req.pool, req.cmid, req.threshold, req.at)
    }
}

/// The version a peer's frame speaks, when this host speaks it; else the oldest it speaks.
fn peer_version(frame: &[u8]) -> u8 {
    match frame.get(2) {
        Some(&v)
            if (tally_proto::MIN_PROTOCOL_VERSION..=tally_proto::PROTOCOL_VERSION).contains(&v) =>
        {
            v
        }
        _ => tally_proto::MIN_PROTOCOL_VERSION,
    }
}

/// An answered activation request, waiting for its changes to be durable and its signature.
#[derive(Clone, Debug)]
pub struct PendingActivation {
    /// The request as decoded.
    pub request: ActivationRequest,
    /// The unsigned response.
    pub response: ActivationResponse,
    /// SHA-256 of the request frame, bound into the signature.
    pub request_digest: [u8; 32],
    /// The edition's threshold as the host's catalog has it (0 when unknown).
    pub threshold: u16,
    /// What to persist before answering.
    pub changes: Changes,
}

/// What to do with a frame.
#[derive(Debug)]
pub enum Outcome {
    /// Send these bytes and keep reading.
    Reply(Vec<u8>),
    /// Send these bytes (an error frame) and close the connection.
    Close {
        /// The error frame.
        reply: Vec<u8>,
        /// Why, for the log.
        reason: DecodeError,
    },
    /// Persist, sign, send.
    Activation(Box<PendingActivation>),
}

/// The host's request handler. Cheap to share: wrap it in an `Arc`.
#[derive(Clone, Debug)]
pub struct HostSession {
    catalog: Arc<Catalog>,
    identity: HostIdentity,
    intervals: Intervals,
    accept_bench: bool,
    clone_policy: crate::clones::ClonePolicy,
    revocations: Arc<Held>,
    rollover: Arc<Vec<u8>>,
}

impl HostSession {
    /// A session serving `catalog` with `identity`.
    pub fn new(catalog: Arc<Catalog>, identity: HostIdentity, intervals: Intervals) -> Self {
        Self {
            catalog,
            identity,
            intervals,
            accept_bench: false,
            clone_policy: crate::clones::ClonePolicy::default(),
            revocations: Arc::new(Held::default()),
            rollover: Arc::new(Vec::new()),
        }
    }

    /// The same host holding `revocations` (X7): it relays the list to clients, tells them its
    /// serial in every version-2 answer, and answers no activation if the list revokes its own
    /// certificate.
    pub fn with_revocations(&self, revocations: Arc<Held>) -> Self {
        let mut s = self.clone();
        s.revocations = revocations;
        s
    }

    /// The same host relaying `chain` (the encoded root rollover statements its certificate
    /// chains through) to clients that ask for it.
    pub fn with_rollover(&self, chain: Arc<Vec<u8>>) -> Self {
        let mut s = self.clone();
        s.rollover = chain;
        s
    }

    /// The revocation list held.
    pub fn revocations(&self) -> &Held {
        &self.revocations
    }

    /// Why this host may not answer activations: the entry of the held list that revokes its
    /// own certificate (X7).
    pub fn revoked(&self) -> Option<Entry> {
        self.revocations
            .revokes_certificate(self.identity.certificate())
    }

    /// The same host handling detected clones by `policy` (X6; host setting `clones`).
    pub fn with_clone_policy(mut self, policy: crate::clones::ClonePolicy) -> Self {
        self.clone_policy = policy;
        self
    }

    /// The same host, also answering the bench edition ([`crate::bench`]) when `accept`.
    pub fn accepting_bench(mut self, accept: bool) -> Self {
        self.accept_bench = accept;
        self
    }

    /// Whether it answers the bench edition.
    pub fn accepts_bench(&self) -> bool {
        self.accept_bench
    }

    /// The host's identity.
    pub fn identity(&self) -> &HostIdentity {
        &self.identity
    }

    /// The catalog served.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The intervals sent to clients.
    pub fn intervals(&self) -> Intervals {
        self.intervals
    }

    /// The same host sending other intervals (R9, R26).
    pub fn with_intervals(&self, intervals: Intervals) -> Self {
        let mut s = self.clone();
        s.intervals = intervals;
        s
    }

    /// The same host serving another catalog (R24).
    pub fn with_catalog(&self, catalog: Arc<Catalog>) -> Self {
        let mut s = self.clone();
        s.catalog = catalog;
        s
    }

    /// An unsigned error frame.
    pub fn error_frame(result: ResultCode) -> Vec<u8> {
        Self::error_frame_for(result, &[])
    }

    /// An unsigned error frame in the version `frame` spoke, when this host speaks it (else
    /// the oldest it speaks, which every client can read).
    pub fn error_frame_for(result: ResultCode, frame: &[u8]) -> Vec<u8> {
        Message::Error(ErrorMessage { result }).encode_as(peer_version(frame))
    }

    /// Handles one whole frame received at `now`.
    pub fn handle(&self, frame: &[u8], now: Timestamp) -> Outcome {
        let msg = match Message::decode(frame) {
            Ok(m) => m,
            Err(reason) => {
                return Outcome::Close {
                    reply: Self::error_frame_for(reason.result_code(), frame),
                    reason,
                };
            }
        };
        match msg {
            // Answered in the version asked in: a version-1 client reads a version-1 frame.
            Message::CertificateRequest => Outcome::Reply(
                Message::CertificateResponse(self.identity.certificate().clone())
                    .encode_as(peer_version(frame)),
            ),
            // X7: a host whose own certificate is revoked counts nobody; the error grants
            // nothing, and the client asks another host (R19).
            Message::ActivationRequest(_) if self.revoked().is_some() => {
                Outcome::Reply(Self::error_frame_for(ResultCode::HOST_REVOKED, frame))
            }
            Message::ActivationRequest(request) => {
                Outcome::Activation(Box::new(self.activate(request, sha256(frame), now)))
            }
            // X7: any host relays the authority's documents; they are signed by the authority.
            Message::DocumentRequest(req) => {
                let (serial, bytes): (u32, &[u8]) = match req.doc {
                    DocumentKind::RevocationList => match self.revocations.list() {
                        Some(l) => (l.serial(), l.bytes()),
                        None => (0, &[]),
                    },
                    // The chain's serial is its length in statements.
                    DocumentKind::RootRollover => (
                        (self.rollover.len() / crate::rollover::STATEMENT_LEN) as u32,
                        &self.rollover,
                    ),
                };
                Outcome::Reply(
                    Message::DocumentChunk(DocumentChunk::of(req.doc, serial, bytes, req.offset))
                        .encode(),
                )
            }
            // A host is never sent responses; a peer that does is not speaking our protocol.
            _ => Outcome::Close {
                reply: Self::error_frame_for(ResultCode::MALFORMED_REQUEST, frame),
                reason: DecodeError::InvalidField {
                    field: "kind",
                    reason: "not a request",
                },
            },
        }
    }

    fn activate(
        &self,
        request: ActivationRequest,
        request_digest: [u8; 32],
        now: Timestamp,
    ) -> PendingActivation {
        let edition = self.catalog.edition(request.sku);
        // (pool, threshold) of the edition asked for, as this host knows it.
        let known = match edition {
            Some(e) => Some((e.pool, e.threshold)),
            None if self.accept_bench && request.sku == bench::SKU => {
                Some((bench::POOL, bench::THRESHOLD))
            }
            None => None,
        };
        let checked = match (known, edition) {
            (None, _) => Err(ResultCode::UNKNOWN_EDITION),
            (Some((pool, _)), _) if pool != request.pool => Err(ResultCode::POOL_MISMATCH),
            // R21: the certified key group and generation must cover the edition (the bench
            // edition is no product: nothing to cover).
            (_, Some(e)) if !self.identity.coverage().covers(e) => {
                Err(ResultCode::EDITION_NOT_COVERED)
            }
            (Some(found), _) => Ok(found),
        };
        let (result, counting, threshold) = match checked {
            // R5 sizes the table from the threshold in the host's catalog, never from the
            // client's claim, so a hostile request cannot grow the table.
            Ok((pool, threshold)) => (
                ResultCode::SUCCESS,
                Some(CountRequest {
                    pool,
                    cmid: request.cmid,
                    threshold,
                    at: now,
                }),
                threshold,
            ),
            Err(code) => (code, None, known.map_or(0, |(_, t)| t)),
        };
        let response = ActivationResponse {
            nonce: request.nonce,
            host_fingerprint: self.identity.fingerprint(),
            result,
            count: 0,
            activation_interval_secs: self.intervals.activation_secs,
            renewal_interval_secs: self.intervals.renewal_secs,
            host_time: now.millis(),
            // A version-2 request gets a version-2 answer, naming the newest revocation list
            // this host holds (X7: 0 for none), so the client learns that a newer one exists.
            revocation_serial: request.ext.map(|_| self.revocations.serial()),
            signature: [0; 64],
        };
        let registry = RegistryUpdate {
            cmid: request.cmid,
            machine_name: request.machine_name.as_str().to_owned(),
            sku: request.sku,
            pool: request.pool,
            license_state: request.license_state,
            seen_at: now,
            result,
            count: 0,
            activated: false,
            peer: None,
            installation: request.ext,
        };
        PendingActivation {
            request,
            response,
            request_digest,
            threshold,
            changes: Changes {
                counting,
                registry,
                clone_policy: self.clone_policy,
            },
        }
    }

    /// Signs the response carrying `count`, the count the store committed (0 for a refusal),
    /// and encodes it.
    pub fn seal(&self, pending: &PendingActivation, count: u32) -> Vec<u8> {
        let mut response = pending.response.clone();
        response.count = count;
        self.identity.sign(&mut response, &pending.request_digest);
        Message::ActivationResponse(response).encode()
    }

    /// Signs a response that reports `result` instead of a count (e.g. the changes could not
    /// be stored, so nothing was acknowledged).
    pub fn seal_failure(&self, pending: &PendingActivation, result: ResultCode) -> Vec<u8> {
        let mut response = pending.response.clone();
        response.result = result;
        response.count = 0;
        self.identity.sign(&mut response, &pending.request_digest);
        Message::ActivationResponse(response).encode()
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use tally_proto::{CertificateBody, MachineName};

    use super::*;
    use crate::catalog::EditionKind;
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
        let verified =
            crate::revocation::VerifiedList::verify(&whole.1, &f.anchor).expect("signed");
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
}
