//! Taking trust back (X7): revoking keys and certificates, superseding on reactivation, and
//! the signed revocation list the authority publishes.
//!
//! The list is a function of the store's rows: its serial is the largest row id and its
//! `issued_at` the newest row's time, so every authority process on one database signs the
//! same bytes for the same serial (Ed25519 signatures are deterministic), and a list is
//! signed once per serial (cached).

use std::sync::PoisonError;

use serde::{Deserialize, Serialize};
use tally_core::revocation::{VerifiedList, build, describe};
use tally_core::time::Timestamp;
use tally_core::trust::{fingerprint, from_hex, to_hex};
use tally_proto::HostCertificate;
use tally_proto::revocation::{Reason, Subject};

use super::{Service, ServiceError};
use crate::store::{KeyRecord, NewCertificate};

/// An operator revokes a key or a certificate.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Why, in the operator's words (kept in the audit log).
    pub reason: String,
    /// The reason code on the revocation list: `key_compromise`, `cessation_of_operation`,
    /// `withdrawn`, `superseded` or `unspecified` [default: `unspecified`].
    #[serde(default)]
    pub code: Option<String>,
}

impl RevokeRequest {
    fn parse(&self) -> Result<(String, Reason), ServiceError> {
        let reason = self.reason.trim();
        if reason.is_empty() {
            return Err(ServiceError::BadRequest(
                "a revocation needs a reason".into(),
            ));
        }
        let code = match self.code.as_deref().map(str::trim) {
            None | Some("") => Reason::Unspecified,
            Some(name) => Reason::from_name(name).ok_or_else(|| {
                let names: Vec<_> = Reason::ALL.iter().map(|r| r.name()).collect();
                ServiceError::BadRequest(format!(
                    "unknown reason code {name:?}: use one of {}",
                    names.join(", ")
                ))
            })?,
        };
        Ok((reason.to_owned(), code))
    }
}

/// One entry of the list, as the API and `tally authority revocations` show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RevocationView {
    /// The serial of the first list that carries it.
    pub id: u32,
    /// `certificate`, `host_key` or `mak`.
    pub kind: String,
    /// The certificate's fingerprint (hex) or the key's serial.
    pub subject: String,
    /// The reason code.
    pub reason: String,
    /// When, Unix ms.
    pub revoked_at: Timestamp,
    /// The entry in words.
    pub description: String,
}

/// The list the authority publishes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RevocationsView {
    /// The list's serial (0: nothing was ever revoked).
    pub serial: u32,
    /// When it was issued, Unix ms.
    pub issued_at: Timestamp,
    /// Every entry, oldest first.
    pub entries: Vec<RevocationView>,
    /// The signed list in the file format hosts import (`tally-revocation-list-v1 HEX`).
    pub file: String,
}

impl Service {
    /// Revokes a key: no new activation with it, and its certificates (a host key) or its
    /// activations (a MAK) go on the revocation list (X7).
    pub async fn revoke(
        &self,
        serial: u32,
        req: &RevokeRequest,
        actor: &str,
    ) -> Result<KeyRecord, ServiceError> {
        let (reason, code) = req.parse()?;
        let key = self
            .store
            .revoke(serial, &reason, code, actor, self.clock.now())
            .await?
            .ok_or(ServiceError::NotFound(serial))?;
        self.log_list().await?;
        Ok(key)
    }

    /// X8: the list as it is now goes into the transparency log (after the change that made it
    /// committed: two changes at once may both log the later list; every published serial's
    /// successor is logged).
    async fn log_list(&self) -> Result<(), ServiceError> {
        let list = self.revocation_list().await?;
        self.append(tally_log::EntryKind::RevocationList, list.bytes().to_vec())
            .await?;
        Ok(())
    }

    /// Revokes one host certificate by its fingerprint (64 hex digits, as `tally host status`
    /// shows it): the key's other hosts keep serving. `false` if it was already revoked.
    pub async fn revoke_certificate(
        &self,
        fingerprint_hex: &str,
        req: &RevokeRequest,
        actor: &str,
    ) -> Result<bool, ServiceError> {
        let (reason, code) = req.parse()?;
        let fp = from_hex(fingerprint_hex.trim())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                ServiceError::BadRequest(
                    "a certificate fingerprint is 64 hex digits (see `tally host status`)".into(),
                )
            })?;
        let added = self
            .store
            .revoke_certificate(fp, code, &reason, actor, self.clock.now())
            .await?;
        if added {
            self.log_list().await?;
        }
        Ok(added)
    }

    /// Records a certificate just issued, superseding the earlier certificates of the same
    /// key and machine (R23, X7).
    pub(super) async fn record_certificate(
        &self,
        cert: &HostCertificate,
        hardware: &[u8],
    ) -> Result<(), ServiceError> {
        let superseded = self
            .store
            .record_certificate(
                NewCertificate {
                    fingerprint: fingerprint(cert),
                    serial: cert.body.key_serial,
                    hardware: to_hex(hardware),
                    host_key: to_hex(&cert.body.host_key),
                },
                self.clock.now(),
            )
            .await?;
        if !superseded.is_empty() {
            self.log_list().await?;
        }
        for fp in superseded {
            tracing::info!(
                serial = cert.body.key_serial,
                superseded = %to_hex(&fp),
                "a reactivation superseded a certificate; it is on the revocation list (X7)"
            );
        }
        Ok(())
    }

    /// The newest revocation list, signed.
    pub async fn revocation_list(&self) -> Result<VerifiedList, ServiceError> {
        let rows = self.store.revocations().await?;
        let serial = rows.last().map_or(0, |r| r.id);
        {
            let cache = self
                .list_cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(list) = cache.as_ref().filter(|l| l.serial() == serial) {
                return Ok(list.clone());
            }
        }
        let issued_at = Timestamp(rows.iter().map(|r| r.entry.revoked_at).max().unwrap_or(0));
        let entries = rows.into_iter().map(|r| r.entry).collect();
        let authority = &self.authority;
        let list = build(&authority.public(), serial, issued_at, entries, |m| {
            authority.sign(m)
        })?
        .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        *self
            .list_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(list.clone());
        Ok(list)
    }

    /// The newest list with its entries in words (`GET /v1/revocations`).
    pub async fn revocations(&self) -> Result<RevocationsView, ServiceError> {
        let list = self.revocation_list().await?;
        let rows = self.store.revocations().await?;
        let entries = rows
            .iter()
            .filter(|r| r.id <= list.serial())
            .map(|r| {
                let (kind, subject) = match r.entry.subject {
                    Subject::Certificate(fp) => ("certificate", to_hex(&fp)),
                    Subject::HostKey(s) => ("host_key", s.to_string()),
                    Subject::Mak(s) => ("mak", s.to_string()),
                };
                RevocationView {
                    id: r.id,
                    kind: kind.into(),
                    subject,
                    reason: r.entry.reason.name().into(),
                    revoked_at: Timestamp(r.entry.revoked_at),
                    description: describe(&r.entry),
                }
            })
            .collect();
        Ok(RevocationsView {
            serial: list.serial(),
            issued_at: Timestamp(list.list().issued_at),
            entries,
            file: list.to_file_text(),
        })
    }
}
