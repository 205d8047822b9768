//! Signed evidence kept in the state file (X5): the hosts' own answers, so that what the state
//! claims about grace and validity can be checked against what a host signed.
//!
//! Each [`SignedAnswer`] is a request frame and the response frame that answered it. It
//! verifies when the response's host certificate (one of the state's remembered certificates)
//! chains to the trusted authority, the response's signature covers the request's digest and
//! the request's nonce, and, for an activation, the request named this installation's CMID and
//! the count reached the edition's threshold (R2). Editing any byte breaks the signature; an
//! answer copied from another installation names another CMID.

use serde::{Deserialize, Serialize};
use tally_core::catalog::{Catalog, Edition};
use tally_core::hex::{from_hex, to_hex};
use tally_core::time::Timestamp;
use tally_core::trust::{TrustAnchor, fingerprint, sha256};
use tally_core::trusted::Evidence;
use tally_proto::{ActivationRequest, ActivationResponse, HostCertificate, Message};
use uuid::Uuid;

/// A host's signed answer with the request it answers, as hex of the two frames.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedAnswer {
    /// The request frame.
    pub request: String,
    /// The response frame.
    pub response: String,
}

/// The answers a client keeps (X5).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceStore {
    /// The latest verified answer, any result: the trusted time's anchor.
    #[serde(default)]
    pub latest: Option<SignedAnswer>,
    /// The latest answer that activated: validity's start (R7).
    #[serde(default)]
    pub activation: Option<SignedAnswer>,
    /// The first answer since grace last started (R10, R11).
    #[serde(default)]
    pub grace: Option<SignedAnswer>,
}

/// A checked answer: the request and response it holds.
struct Checked {
    request: ActivationRequest,
    response: ActivationResponse,
}

impl SignedAnswer {
    /// Keeps the two frames of one exchange.
    pub fn new(request: &[u8], response: &[u8]) -> Self {
        Self {
            request: to_hex(request),
            response: to_hex(response),
        }
    }

    /// The answer if it verifies against `anchor` through one of `certs` (see module docs);
    /// with `edition`, a success must also come from a host that covers it (R21).
    fn check(
        &self,
        anchor: &TrustAnchor,
        certs: &[HostCertificate],
        edition: Option<&Edition>,
    ) -> Option<Checked> {
        let request_frame = from_hex(&self.request)?;
        let response_frame = from_hex(&self.response)?;
        let Ok(Message::ActivationRequest(request)) = Message::decode(&request_frame) else {
            return None;
        };
        let Ok(Message::ActivationResponse(response)) = Message::decode(&response_frame) else {
            return None;
        };
        let cert = certs
            .iter()
            .find(|c| fingerprint(c) == response.host_fingerprint)?;
        let host = anchor
            .verify_certificate(cert, Timestamp(response.host_time))
            .ok()?;
        let digest = sha256(&request_frame);
        match edition {
            Some(e) => host.verify_response(&response, &digest, &request.nonce, e),
            None => host.verify_signature(&response, &digest, &request.nonce),
        }
        .ok()?;
        Some(Checked { request, response })
    }
}

impl EvidenceStore {
    /// The fingerprint of the host certificate that signed the activation answer, if any (not
    /// verified: for reports only).
    pub fn activation_host(&self) -> Option<[u8; 32]> {
        let a = self.activation.as_ref()?;
        match Message::decode(&from_hex(&a.response)?) {
            Ok(Message::ActivationResponse(r)) => Some(r.host_fingerprint),
            _ => None,
        }
    }

    /// The signed times that verify (X5). Activation evidence must name `cmid` and have reached
    /// the threshold of the edition `sku` in `catalog` (R2).
    pub fn verify(
        &self,
        anchor: Option<&TrustAnchor>,
        certs: &[HostCertificate],
        cmid: Uuid,
        sku: Option<Uuid>,
        catalog: &Catalog,
    ) -> Evidence {
        let Some(anchor) = anchor else {
            return Evidence::default();
        };
        let time = |a: &Option<SignedAnswer>| {
            a.as_ref()
                .and_then(|a| a.check(anchor, certs, None))
                .map(|c| Timestamp(c.response.host_time))
        };
        let edition = sku.and_then(|s| catalog.edition(s));
        let threshold = edition.map(|e| u32::from(e.threshold));
        let activation = self
            .activation
            .as_ref()
            .zip(edition)
            .and_then(|(a, e)| a.check(anchor, certs, Some(e)))
            .filter(|c| {
                c.request.cmid == cmid
                    && Some(c.request.sku) == sku
                    && c.response.result.is_success()
                    && threshold.is_some_and(|t| t > 0 && c.response.count >= t)
            })
            .map(|c| Timestamp(c.response.host_time));
        Evidence {
            latest: time(&self.latest),
            activation,
            grace: time(&self.grace),
        }
    }
}
