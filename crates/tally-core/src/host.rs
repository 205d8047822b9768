//! The host's session logic, sans-I/O: bytes in, bytes (and changes to persist) out.
//!
//! The server calls [`HostSession::handle`] with one frame; for an activation request it gets
//! a [`PendingActivation`]: the response to sign and the changes the store must make durable
//! before the response may be sent (commit before answering). Counting happens under the
//! caller's lock on [`CountTables`]; signing ([`HostSession::seal`]) happens outside it.

use std::sync::{Arc, Mutex, PoisonError};

use tally_proto::{
    ActivationRequest, ActivationResponse, DecodeError, ErrorMessage, LicenseState, Message, ResultCode,
};
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::counting::{CountTables, TableChange};
use crate::time::Timestamp;
use crate::trust::{HostIdentity, sha256};

/// R8 default: retry a failed activation every 120 minutes.
pub const DEFAULT_ACTIVATION_INTERVAL_MIN: u32 = 120;
/// R8 default: renew every 10080 minutes (7 days).
pub const DEFAULT_RENEWAL_INTERVAL_MIN: u32 = 10_080;

/// Settings the host sends in every response (R9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intervals {
    /// Minutes between retries after a failure.
    pub activation: u32,
    /// Minutes between renewals.
    pub renewal: u32,
}

impl Default for Intervals {
    fn default() -> Self {
        Self {
            activation: DEFAULT_ACTIVATION_INTERVAL_MIN,
            renewal: DEFAULT_RENEWAL_INTERVAL_MIN,
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
}

/// Everything one request changes, persisted in one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes {
    /// The pool table change, if the request was counted.
    pub table: Option<TableChange>,
    /// The registry record (R6).
    pub registry: RegistryUpdate,
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
#[derive(Debug)]
pub struct HostSession {
    catalog: Arc<Catalog>,
    identity: HostIdentity,
    intervals: Intervals,
}

impl HostSession {
    /// A session serving `catalog` with `identity`.
    pub fn new(catalog: Arc<Catalog>, identity: HostIdentity, intervals: Intervals) -> Self {
        Self { catalog, identity, intervals }
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

    /// An unsigned error frame.
    pub fn error_frame(result: ResultCode) -> Vec<u8> {
        Message::Error(ErrorMessage { result }).encode()
    }

    /// Handles one whole frame received at `now`.
    pub fn handle(&self, frame: &[u8], now: Timestamp, tables: &Mutex<CountTables>) -> Outcome {
        let msg = match Message::decode(frame) {
            Ok(m) => m,
            Err(reason) => {
                let code = match reason {
                    DecodeError::UnsupportedVersion(_) => ResultCode::UNSUPPORTED_VERSION,
                    DecodeError::Frame(_) => ResultCode::FRAME_TOO_LARGE,
                    _ => ResultCode::MALFORMED_REQUEST,
                };
                return Outcome::Close { reply: Self::error_frame(code), reason };
            }
        };
        match msg {
            Message::CertificateRequest => {
                Outcome::Reply(Message::CertificateResponse(self.identity.certificate().clone()).encode())
            }
            Message::ActivationRequest(request) => {
                Outcome::Activation(Box::new(self.activate(request, sha256(frame), now, tables)))
            }
            // A host is never sent responses; a peer that does is not speaking our protocol.
            _ => Outcome::Close {
                reply: Self::error_frame(ResultCode::MALFORMED_REQUEST),
                reason: DecodeError::InvalidField { field: "kind", reason: "not a request" },
            },
        }
    }

    fn activate(
        &self,
        request: ActivationRequest,
        request_digest: [u8; 32],
        now: Timestamp,
        tables: &Mutex<CountTables>,
    ) -> PendingActivation {
        let edition = self.catalog.edition(request.sku);
        let checked = match edition {
            None => Err(ResultCode::UNKNOWN_EDITION),
            Some(e) if e.pool != request.pool => Err(ResultCode::POOL_MISMATCH),
            // R21: the certified key group and generation must cover the edition.
            Some(e) if !self.identity.coverage().covers(e) => Err(ResultCode::EDITION_NOT_COVERED),
            Some(e) => Ok(e),
        };
        let (result, count, table, threshold) = match checked {
            Ok(e) => {
                // R5 sizes the table from the threshold in the host's catalog, never from the
                // client's claim, so a hostile request cannot grow the table.
                let (count, change) = tables
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(e.pool, request.cmid, e.threshold, now);
                (ResultCode::SUCCESS, count, Some(change), e.threshold)
            }
            Err(code) => (code, 0, None, edition.map_or(0, |e| e.threshold)),
        };
        let response = ActivationResponse {
            nonce: request.nonce,
            host_fingerprint: self.identity.fingerprint(),
            result,
            count,
            activation_interval: self.intervals.activation,
            renewal_interval: self.intervals.renewal,
            host_time: now.millis(),
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
            count,
            activated: result.is_success() && threshold > 0 && count >= u32::from(threshold),
        };
        PendingActivation {
            request,
            response,
            request_digest,
            threshold,
            changes: Changes { table, registry },
        }
    }

    /// Signs the response and encodes it.
    pub fn seal(&self, pending: &PendingActivation) -> Vec<u8> {
        let mut response = pending.response.clone();
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
