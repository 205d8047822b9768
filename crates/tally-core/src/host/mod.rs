//! The host's session logic, sans-I/O: bytes in, bytes (and changes to persist) out.
//!
//! The server calls [`HostSession::handle`] with one frame; for an activation request it gets
//! a [`PendingActivation`]: the unsigned response and the [`Changes`] the store must make
//! durable before the response may be sent (commit before answering).
//!
//! The session decides *whether* a request is counted (edition known, pool matches, R21
//! coverage) but does not count it: the count is taken by the store inside the transaction that
//! makes it durable ([`crate::counting::CountTables::apply`] on the table as stored), so a count given to a client
//! only ever includes machines whose rows are durable in the same or an earlier commit, a failed
//! commit leaves nothing behind, and hosts sharing one database count as one (X1). The store's
//! answer ([`Counted`]) then goes into the response, which [`HostSession::seal`] signs.
//!
//! The types of what one request changes live in `changes` (re-exported here); the tests in
//! `tests`.

use std::sync::Arc;

use tally_proto::revocation::Entry;
use tally_proto::{
    ActivationRequest, ActivationResponse, DecodeError, DocumentChunk, DocumentKind, ErrorMessage,
    Message, ResultCode,
};

use crate::bench;
use crate::catalog::Catalog;
use crate::revocation::Held;
use crate::time::Timestamp;
use crate::trust::{HostIdentity, sha256};

mod changes;

pub use changes::{Changes, CountRequest, Counted, RegistryUpdate};

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
mod tests;
