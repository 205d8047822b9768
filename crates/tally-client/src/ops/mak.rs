//! MAK clients (R25): online activation through the authority's HTTP API, and the offline
//! installation ID / confirmation ID exchange.

use tally_core::hex::to_hex;
use tally_core::keys::{KeyKind, ProductKey};
use tally_core::time::Timestamp;
use tally_core::trust::TrustAnchor;
use uuid::Uuid;

use super::{Client, OpResult};
use crate::authority::{AuthorityClient, AuthorityClientError};
use crate::codes;
use crate::hardware;
use crate::state::{ClientState, StateError};

impl Client {
    /// R25: activates a MAK client online with the authority at `url` (or the saved one).
    pub async fn activate_mak(&self, url: Option<&str>, now: Timestamp) -> OpResult {
        let state = match ClientState::load(&self.dir, now) {
            Ok(s) => s,
            Err(e) => return OpResult::from_error(&e),
        };
        let (Some(key), Some(sku)) = (state.key.filter(|k| k.kind() == KeyKind::Mak), state.sku)
        else {
            return OpResult::from_error(&StateError::Key("no MAK installed".into()));
        };
        let Some(url) = url
            .map(str::to_owned)
            .or_else(|| state.authority_url.clone())
        else {
            return self.done(
                now,
                codes::NO_HOST,
                "no authority URL: a MAK installation activates with the vendor's authority; give \
                 its URL once (CLI: `tally client activate --authority URL`; SDK: the authority \
                 URL argument of activate) and it is remembered, or activate offline with the \
                 installation ID"
                    .into(),
            );
        };
        let Some(trust) = self.anchor() else {
            return self.done(
                now,
                codes::NO_TRUST,
                "no trusted authority key: copy the vendor's authority.pub into the state directory \
                 (CLI: `tally client trust FILE`; SDK: the trust file argument of activate)"
                    .into(),
            );
        };
        let hardware = hardware::id();
        let answer = match AuthorityClient::new(&url, self.timeout) {
            Ok(authority) => authority
                .activate_mak(&key.to_string(), state.cmid, sku, &to_hex(&hardware))
                .await
                .map_err(|e| (authority.base().to_owned(), e)),
            Err(e) => Err((url.trim_end_matches('/').to_owned(), e)),
        };
        let (base, grant) = match answer {
            Ok(grant) => (url.trim_end_matches('/').to_owned(), grant),
            Err((_, AuthorityClientError::Incomplete(_))) => {
                return self.done(
                    now,
                    codes::PROTOCOL_ERROR,
                    "the authority's answer is incomplete".into(),
                );
            }
            Err((base, error)) => {
                let _ = ClientState::update(&self.dir, now, |s| -> Result<(), StateError> {
                    // X5: the retry is scheduled on trusted time.
                    let t = self.trusted_now(s, now);
                    s.record_failure(
                        Some(base.clone()),
                        "mak_refused",
                        codes::HOST_UNREACHABLE,
                        t,
                    );
                    Ok(())
                });
                return OpResult {
                    ok: false,
                    code: codes::HOST_UNREACHABLE,
                    result: "mak_refused".into(),
                    message: error_chain(&error),
                    count: None,
                    threshold: None,
                    status: self.status(now).ok(),
                };
            }
        };
        self.finish_mak(
            key,
            sku,
            hardware,
            grant.serial,
            grant.day,
            &grant.signature,
            Some(base),
            &trust,
            now,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_mak(
        &self,
        key: ProductKey,
        sku: Uuid,
        hardware: [u8; 5],
        serial: u32,
        day: u16,
        signature: &[u8; 64],
        url: Option<String>,
        trust: &TrustAnchor,
        now: Timestamp,
    ) -> OpResult {
        let cmid = match ClientState::load(&self.dir, now) {
            Ok(s) => s.cmid,
            Err(e) => return OpResult::from_error(&e),
        };
        let claim = tally_core::trust::MakClaim {
            serial,
            cmid: *cmid.as_bytes(),
            sku: *sku.as_bytes(),
            hardware,
            day,
        };
        if serial != key.serial() || claim.verify(trust, signature).is_err() {
            return self.done(
                now,
                codes::UNTRUSTED_RESPONSE,
                "the MAK activation does not verify under the trusted authority key".into(),
            );
        }
        let hw = hardware::probe();
        let saved = ClientState::update(&self.dir, now, |s| -> Result<(), StateError> {
            s.license
                .on_permanent_activation(self.trusted_now(s, now), Some(&hw));
            if url.is_some() {
                s.authority_url = url.clone();
            }
            s.last_attempt = Some(crate::state::Attempt {
                at: now,
                host: url.clone(),
                result: "activated".into(),
                code: 0,
                count: None,
            });
            Ok(())
        });
        match saved {
            Ok(()) => self.done(
                now,
                0,
                "activated with the MAK (permanent; no renewal needed)".into(),
            ),
            Err(e) => OpResult::from_error(&e),
        }
    }

    /// R25 offline: the installation ID a MAK client reads out (or sends as a file).
    pub fn mak_installation_id(&self, now: Timestamp) -> Result<Vec<String>, StateError> {
        let state = ClientState::load(&self.dir, now)?;
        let (Some(key), Some(sku)) = (state.key.filter(|k| k.kind() == KeyKind::Mak), state.sku)
        else {
            return Err(StateError::Key("no MAK installed".into()));
        };
        let mut bytes = Vec::with_capacity(51);
        bytes.extend_from_slice(&key.payload().to_be_bytes()[2..]);
        bytes.extend_from_slice(state.cmid.as_bytes());
        bytes.extend_from_slice(sku.as_bytes());
        bytes.extend_from_slice(&hardware::id());
        Ok(tally_core::digits::encode(&bytes))
    }

    /// R25 offline: applies the confirmation ID the authority gave.
    pub fn mak_confirm(&self, confirmation: &str, now: Timestamp) -> OpResult {
        let state = match ClientState::load(&self.dir, now) {
            Ok(s) => s,
            Err(e) => return OpResult::from_error(&e),
        };
        let (Some(key), Some(sku)) = (state.key.filter(|k| k.kind() == KeyKind::Mak), state.sku)
        else {
            return OpResult::from_error(&StateError::Key("no MAK installed".into()));
        };
        let Some(trust) = self.anchor() else {
            return self.done(
                now,
                codes::NO_TRUST,
                "no trusted authority key: copy the vendor's authority.pub into the state directory \
                 (CLI: `tally client trust FILE`; SDK: the trust file argument of activate)"
                    .into(),
            );
        };
        let bytes = match tally_core::digits::decode(confirmation, 66) {
            Ok(b) => b,
            Err(e) => {
                return OpResult::from_error(&StateError::Key(format!("confirmation ID: {e}")));
            }
        };
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bytes[2..]);
        let day = u16::from_be_bytes([bytes[0], bytes[1]]);
        self.finish_mak(
            key,
            sku,
            hardware::id(),
            key.serial(),
            day,
            &signature,
            None,
            &trust,
            now,
        )
    }
}

/// An error and its sources on one line, as the CLI prints them (each cause once).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    tally_core::error_text::chain(error)
}
