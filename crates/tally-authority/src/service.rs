//! The authority's operations, independent of HTTP: key issuance, host activation online and
//! offline with the R23 limits, exceptions, revocation.

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use tally_core::keys::{KeyGroup, KeyKind, ProductKey};
use tally_core::time::{Clock, DAY_MS, Timestamp};
use tally_core::trust::{armor, from_hex, labels, to_hex};
use thiserror::Error;

mod revoke;
pub mod transparency;

pub use revoke::{RevocationView, RevocationsView, RevokeRequest};
use transparency::LogReceipt;

use crate::offline;
use crate::store::{
    ActivationRecord, AuditEntry, AuthorityStore, DEFAULT_MAX_ACTIVATIONS, DEFAULT_MAX_HOSTS,
    KeyRecord, NewKey, Refusal, StoreError, Usage,
};
use crate::{Authority, AuthorityError};
use tally_log::EntryKind;

/// Bytes of the hardware id carried in activations (and offline installation IDs).
pub const HARDWARE_ID_BYTES: usize = 5;
/// Installation ID length in bytes: key payload (14) + host public key (32) + hardware (5).
pub const INSTALLATION_ID_BYTES: usize = 14 + 32 + HARDWARE_ID_BYTES;
/// Confirmation ID length in bytes: issue day (2) + signature (64).
pub const CONFIRMATION_ID_BYTES: usize = 2 + 64;

/// Why a request failed; each maps to one HTTP status and a stable `error` code.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The key is not one this authority issued (or not of the right kind).
    #[error("{0}")]
    KeyNotValid(String),
    /// The authority refused the activation.
    #[error("{0}")]
    Refused(Refusal),
    /// No such key.
    #[error("no key with serial {0}")]
    NotFound(u32),
    /// X8: no log entry holds the object asked for.
    #[error("no entry of the transparency log holds this object")]
    NotLogged,
    /// Storage failed (details in the server log only).
    #[error("internal error")]
    Store(#[from] StoreError),
    /// The root key could not sign (its token is unreachable, say; details in the server log).
    #[error("the authority cannot sign right now; try again later")]
    Signer(String),
}

impl ServiceError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::KeyNotValid(_) => "key_not_valid",
            Self::Refused(Refusal::Revoked { .. }) => "key_revoked",
            Self::Refused(Refusal::UnknownKey) => "key_not_valid",
            Self::Refused(_) => "limit_reached",
            Self::NotFound(_) | Self::NotLogged => "not_found",
            Self::Store(StoreError::LogDamaged { .. }) => "log_damaged",
            Self::Store(_) => "internal",
            Self::Signer(_) => "signer_unavailable",
        }
    }
}

impl From<tally_core::keys::KeyError> for ServiceError {
    fn from(e: tally_core::keys::KeyError) -> Self {
        Self::KeyNotValid(e.to_string())
    }
}

impl From<AuthorityError> for ServiceError {
    fn from(e: AuthorityError) -> Self {
        match e {
            AuthorityError::Signer(error) => Self::Signer(error.to_string()),
            other => Self::KeyNotValid(other.to_string()),
        }
    }
}

/// A host asks to be certified (R22).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostActivationRequest {
    /// The host key installed on the host.
    pub host_key: String,
    /// The host's Ed25519 public key, hex.
    pub host_public_key: String,
    /// The host's hardware id, 10 hex digits.
    pub hardware_id: String,
}

/// A host certified.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct HostActivation {
    /// The certificate, in the `tally-host-certificate-v1` file format.
    pub certificate: String,
    /// The certified key group.
    pub key_group: String,
    /// The certified generation.
    pub generation: u8,
    /// The key's serial.
    pub serial: u32,
    /// What the activation used of the key's limits.
    pub usage: Usage,
    /// X8: the certificate's entry in the transparency log and its inclusion proof (absent
    /// only if the proof could not be built after the activation was recorded; the host can
    /// fetch it later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogReceipt>,
}

/// An operator asks for a key.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// Key group.
    pub group: KeyGroup,
    /// Generation (0–15).
    #[serde(default = "one")]
    pub generation: u8,
    /// Free text (customer, order number).
    #[serde(default)]
    pub note: String,
}

fn one() -> u8 {
    1
}

/// An operator asks for a MAK (R25).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MakIssueRequest {
    /// Distinct machines the MAK may activate.
    pub budget: u32,
    /// Free text.
    #[serde(default)]
    pub note: String,
}

/// Activations of one machine with one MAK (reinstalls of the same machine are not new ones).
pub const MAK_ACTIVATIONS_PER_MACHINE: u32 = 10;

/// A MAK client asks to be activated (R25).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MakActivationRequest {
    /// The MAK.
    pub mak: String,
    /// The client's CMID.
    pub cmid: uuid::Uuid,
    /// The client's edition.
    pub sku: uuid::Uuid,
    /// The client's hardware id, 10 hex digits.
    pub hardware_id: String,
}

/// A MAK client activated.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct MakActivation {
    /// The MAK's serial.
    pub serial: u32,
    /// Issue day (days since 1970).
    pub day: u16,
    /// The authority's signature over the claim, hex.
    pub signature: String,
    /// What the activation used of the MAK's budget.
    pub usage: Usage,
    /// X8: the claim's entry in the transparency log and its inclusion proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogReceipt>,
}

/// An operator raises a key's limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExceptionRequest {
    /// More distinct hosts.
    #[serde(default)]
    pub extra_hosts: u32,
    /// More activations per host.
    #[serde(default)]
    pub extra_activations: u32,
    /// Why (kept in the audit log).
    pub reason: String,
}

/// A key with its activations.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyDetail {
    /// The key.
    #[serde(flatten)]
    pub key: KeyRecord,
    /// Its activations.
    pub activations: Vec<ActivationRecord>,
}

/// The authority service.
pub struct Service {
    pub(crate) authority: Authority,
    pub(crate) store: Arc<dyn AuthorityStore>,
    pub(crate) clock: Arc<dyn Clock>,
    /// The newest revocation list signed, reused while its serial is the newest.
    list_cache: std::sync::Mutex<Option<tally_core::revocation::VerifiedList>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// Validates a hardware id: 10 hex digits.
pub fn parse_hardware_id(text: &str) -> Result<[u8; HARDWARE_ID_BYTES], ServiceError> {
    from_hex(text)
        .and_then(|b| <[u8; HARDWARE_ID_BYTES]>::try_from(b).ok())
        .ok_or_else(|| ServiceError::BadRequest("hardware_id must be 10 hex digits".into()))
}

impl Service {
    /// A service for `authority` over `store`.
    pub fn new(
        authority: Authority,
        store: Arc<dyn AuthorityStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            authority,
            store,
            clock,
            list_cache: std::sync::Mutex::new(None),
        }
    }

    /// The authority.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Issues and records a host key.
    pub async fn issue_host_key(
        &self,
        req: &IssueRequest,
        actor: &str,
    ) -> Result<KeyRecord, ServiceError> {
        if req.generation > 15 {
            return Err(ServiceError::BadRequest(
                "generation must be between 0 and 15".into(),
            ));
        }
        let (group, generation, note) = (req.group, req.generation, req.note.clone());
        self.insert_with_free_serial(actor, |serial| {
            let key = self
                .authority
                .issue_host_key_with_serial(group, generation, serial)?;
            Ok(NewKey {
                serial,
                kind: "host",
                key: key.to_string(),
                group: Some(group.name().to_owned()),
                generation: Some(generation),
                max_hosts: DEFAULT_MAX_HOSTS,
                max_activations: DEFAULT_MAX_ACTIVATIONS,
                note: note.clone(),
            })
        })
        .await
    }

    /// Records the key `make` builds for a random serial, trying again if the serial is taken.
    async fn insert_with_free_serial(
        &self,
        actor: &str,
        make: impl Fn(u32) -> Result<NewKey, ServiceError>,
    ) -> Result<KeyRecord, ServiceError> {
        let now = self.clock.now();
        for _ in 0..16 {
            let serial: u32 = rand::rng().random();
            if self.store.insert_key(make(serial)?, actor, now).await? {
                return self
                    .store
                    .key(serial)
                    .await?
                    .ok_or(ServiceError::NotFound(serial));
            }
        }
        Err(ServiceError::BadRequest(
            "could not find a free serial; try again".into(),
        ))
    }

    /// Certifies a host (R22, R23), counting it against the key's limits and logging the
    /// certificate (X8).
    pub async fn activate_host(
        &self,
        req: &HostActivationRequest,
    ) -> Result<HostActivation, ServiceError> {
        self.activate_host_as(req, EntryKind::HostCertificate).await
    }

    async fn activate_host_as(
        &self,
        req: &HostActivationRequest,
        kind: EntryKind,
    ) -> Result<HostActivation, ServiceError> {
        let key: ProductKey = req
            .host_key
            .parse()
            .map_err(|e| ServiceError::KeyNotValid(format!("host_key: {e}")))?;
        if key.kind() != KeyKind::Host {
            return Err(ServiceError::KeyNotValid(format!(
                "this is a {} key, not a host key",
                key.kind()
            )));
        }
        let public = from_hex(&req.host_public_key)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .ok_or_else(|| {
                ServiceError::BadRequest(
                    "host_public_key must be 64 hex digits of an Ed25519 key".into(),
                )
            })?;
        let hardware = parse_hardware_id(&req.hardware_id)?;
        self.authority.check_key(key)?;
        // The certificate is signed first and delivered only if the activation is allowed:
        // the store records the activation and logs the certificate in one transaction (X8).
        let now = self.clock.now();
        let cert = self.authority.certify(key, &public, now)?;
        let entry = self.log_entry(kind, cert.to_bytes(), now);
        let (usage, index) = match self
            .store
            .activate_logged(
                key.serial(),
                &to_hex(&hardware),
                &to_hex(public.as_bytes()),
                now,
                &entry,
            )
            .await?
        {
            Ok(u) => u,
            Err(refusal) => return Err(ServiceError::Refused(refusal)),
        };
        // X7: the certificates this machine had with this key are superseded (right after the
        // activation counted: a refused activation delivers nothing and supersedes nothing).
        self.record_certificate(&cert, &hardware).await?;
        let fields = key.host_fields()?;
        Ok(HostActivation {
            certificate: armor(labels::HOST_CERTIFICATE, &cert.to_bytes()),
            key_group: fields.group.name().to_owned(),
            generation: fields.generation,
            serial: fields.serial,
            usage,
            log: self.receipt(index).await,
        })
    }

    /// The receipt of entry `index` in the tree that ends with it. The activation is already
    /// recorded and logged, so a failure here is logged and the answer goes without a proof
    /// (the host fetches it later) rather than failing an activation that counted.
    async fn receipt(&self, index: u64) -> Option<LogReceipt> {
        match self.inclusion_proof(index, Some(index + 1)).await {
            Ok(p) => Some(LogReceipt::of(&p)),
            Err(error) => {
                tracing::error!(%error, index, "cannot build the inclusion proof of a logged entry");
                None
            }
        }
    }

    /// Issues and records a MAK with a budget of machines (R25).
    pub async fn issue_mak(
        &self,
        req: &MakIssueRequest,
        actor: &str,
    ) -> Result<KeyRecord, ServiceError> {
        if req.budget == 0 || req.budget > 1_000_000 {
            return Err(ServiceError::BadRequest(
                "budget must be between 1 and 1000000".into(),
            ));
        }
        self.insert_with_free_serial(actor, |serial| {
            Ok(NewKey {
                serial,
                kind: "mak",
                key: self.authority.issue_mak_with_serial(serial).to_string(),
                group: None,
                generation: None,
                max_hosts: req.budget,
                max_activations: MAK_ACTIVATIONS_PER_MACHINE,
                note: req.note.clone(),
            })
        })
        .await
    }

    /// Activates a MAK client (R25), counted against the MAK's budget, and logs the claim
    /// (X8).
    pub async fn activate_mak(
        &self,
        req: &MakActivationRequest,
    ) -> Result<MakActivation, ServiceError> {
        self.activate_mak_as(req, EntryKind::MakClaim).await
    }

    async fn activate_mak_as(
        &self,
        req: &MakActivationRequest,
        kind: EntryKind,
    ) -> Result<MakActivation, ServiceError> {
        let key: ProductKey = req
            .mak
            .parse()
            .map_err(|e| ServiceError::KeyNotValid(format!("mak: {e}")))?;
        if key.kind() != KeyKind::Mak {
            return Err(ServiceError::KeyNotValid(format!(
                "this is a {} key, not a MAK",
                key.kind()
            )));
        }
        let hardware = parse_hardware_id(&req.hardware_id)?;
        self.authority.check_key(key)?;
        let now = self.clock.now();
        let claim = tally_core::trust::MakClaim {
            serial: key.serial(),
            cmid: *req.cmid.as_bytes(),
            sku: *req.sku.as_bytes(),
            hardware,
            day: now
                .millis()
                .div_euclid(DAY_MS)
                .clamp(0, i64::from(u16::MAX)) as u16,
        };
        let signed = claim.signed_bytes();
        let signature = self.authority.sign(&signed)?;
        // The logged object: the signed bytes (with their context) and the signature.
        let mut object = signed;
        object.extend_from_slice(&signature);
        let entry = self.log_entry(kind, object, now);
        let (usage, index) = match self
            .store
            .activate_logged(
                key.serial(),
                &to_hex(&hardware),
                &req.cmid.to_string(),
                now,
                &entry,
            )
            .await?
        {
            Ok(u) => u,
            Err(refusal) => return Err(ServiceError::Refused(refusal)),
        };
        Ok(MakActivation {
            serial: claim.serial,
            day: claim.day,
            signature: to_hex(&signature),
            usage,
            log: self.receipt(index).await,
        })
    }

    /// Offline activation (R22): turns an installation ID into a confirmation ID.
    pub async fn confirm(&self, installation_id: &str) -> Result<Vec<String>, ServiceError> {
        let bytes = offline::decode(installation_id, INSTALLATION_ID_BYTES)
            .map_err(|e| ServiceError::BadRequest(format!("installation ID: {e}")))?;
        let mut payload = [0u8; 16];
        payload[2..].copy_from_slice(&bytes[..14]);
        let key = ProductKey::from_payload(u128::from_be_bytes(payload));
        if key.kind() == KeyKind::Mak {
            // R25 offline: MAK payload, CMID, SKU, hardware id.
            let uuid = |b: &[u8]| {
                uuid::Uuid::from_slice(b)
                    .map_err(|_| ServiceError::BadRequest("installation ID".into()))
            };
            let req = MakActivationRequest {
                mak: key.to_string(),
                cmid: uuid(&bytes[14..30])?,
                sku: uuid(&bytes[30..46])?,
                hardware_id: to_hex(&bytes[46..]),
            };
            let a = self
                .activate_mak_as(&req, EntryKind::MakClaimOffline)
                .await?;
            let mut out = Vec::with_capacity(CONFIRMATION_ID_BYTES);
            out.extend_from_slice(&a.day.to_be_bytes());
            out.extend_from_slice(&from_hex(&a.signature).unwrap_or_default());
            return Ok(offline::encode(&out));
        }
        let req = HostActivationRequest {
            host_key: key.to_string(),
            host_public_key: to_hex(&bytes[14..46]),
            hardware_id: to_hex(&bytes[46..]),
        };
        let activation = self
            .activate_host_as(&req, EntryKind::HostCertificateOffline)
            .await?;
        let cert = tally_core::trust::parse_certificate(&activation.certificate)
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        // The host rebuilds the certificate from what it knows; it needs only the issue day
        // (validity is day-aligned) and the signature.
        let day = certificate_day(cert.body.not_before);
        let mut out = Vec::with_capacity(CONFIRMATION_ID_BYTES);
        out.extend_from_slice(&day.to_be_bytes());
        out.extend_from_slice(&cert.signature);
        Ok(offline::encode(&out))
    }

    /// Raises a key's limits.
    pub async fn exception(
        &self,
        serial: u32,
        req: &ExceptionRequest,
        actor: &str,
    ) -> Result<KeyRecord, ServiceError> {
        if req.reason.trim().is_empty() {
            return Err(ServiceError::BadRequest(
                "an exception needs a reason".into(),
            ));
        }
        if req.extra_hosts > 1000 || req.extra_activations > 1000 {
            return Err(ServiceError::BadRequest(
                "an exception adds at most 1000".into(),
            ));
        }
        self.store
            .grant_exception(
                serial,
                req.extra_hosts,
                req.extra_activations,
                req.reason.trim(),
                actor,
                self.clock.now(),
            )
            .await?
            .ok_or(ServiceError::NotFound(serial))
    }

    /// All keys.
    pub async fn keys(&self) -> Result<Vec<KeyRecord>, ServiceError> {
        Ok(self.store.keys().await?)
    }

    /// One key with its activations.
    pub async fn key(&self, serial: u32) -> Result<KeyDetail, ServiceError> {
        let key = self
            .store
            .key(serial)
            .await?
            .ok_or(ServiceError::NotFound(serial))?;
        Ok(KeyDetail {
            key,
            activations: self.store.activations(serial).await?,
        })
    }

    /// The audit log.
    pub async fn audit(&self) -> Result<Vec<AuditEntry>, ServiceError> {
        Ok(self.store.audit().await?)
    }
}

/// The issue day (days since 1970) of a certificate, from its `not_before` (one day earlier).
pub fn certificate_day(not_before: i64) -> u16 {
    ((not_before + 86_400).div_euclid(86_400)).clamp(0, i64::from(u16::MAX)) as u16
}

/// Builds the installation ID a host shows for offline activation.
pub fn installation_id(
    key: ProductKey,
    host_public: &VerifyingKey,
    hardware: &[u8; HARDWARE_ID_BYTES],
) -> Vec<String> {
    let mut bytes = Vec::with_capacity(INSTALLATION_ID_BYTES);
    bytes.extend_from_slice(&key.payload().to_be_bytes()[2..]);
    bytes.extend_from_slice(host_public.as_bytes());
    bytes.extend_from_slice(hardware);
    offline::encode(&bytes)
}

/// Rebuilds the host certificate from a confirmation ID: the host knows its key, its public key
/// and the authority's public key; the confirmation supplies the issue day and the signature.
pub fn certificate_from_confirmation(
    confirmation: &str,
    key: ProductKey,
    host_public: &VerifyingKey,
    authority: &VerifyingKey,
) -> Result<tally_proto::HostCertificate, ServiceError> {
    let bytes = offline::decode(confirmation, CONFIRMATION_ID_BYTES)
        .map_err(|e| ServiceError::BadRequest(format!("confirmation ID: {e}")))?;
    let day = i64::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    let mut signature = [0u8; 64];
    signature.copy_from_slice(&bytes[2..]);
    let fields = key.host_fields()?;
    let issued = Timestamp(day * DAY_MS);
    Ok(tally_proto::HostCertificate {
        body: crate::certificate_body(fields, host_public, authority, issued),
        signature,
    })
}
