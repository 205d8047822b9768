//! What a client does with the authority's revocation list (X7).
//!
//! The client keeps the newest list it verified in its state (`revocations`, the armored
//! list), under the same lock as everything else it keeps, and never takes an older one. The
//! list arrives from any host (a version-2 answer names the host's serial; a higher one is
//! fetched on the same connection), or from a file the vendor's update puts beside the
//! catalog, or by `tally client import-revocations`.
//!
//! What the list changes:
//! - an answer signed by a revoked host is refused (`host_revoked`), and the client asks the
//!   next host (R19) ([`crate::connect::Connector`]);
//! - evidence signed by a revoked host counts for nothing ([`ClientState::live_certificates`]):
//!   an installation a revoked host activated is due to activate again at once, elsewhere;
//! - a MAK on the list ends the MAK activation ([`ClientState::revoked_mak`]).

use tally_core::KeyKind;
use tally_core::revocation::{Held, Offer, RevocationError, VerifiedList, describe};
use tally_core::trust::{TrustAnchor, fingerprint};
use tally_proto::HostCertificate;
use tally_proto::revocation::Entry;

use crate::state::ClientState;

impl ClientState {
    /// The list held, verified under `anchor` (none without an anchor, or when the stored
    /// list does not verify: the next host that names a serial refetches it).
    pub fn held_revocations(&self, anchor: Option<&TrustAnchor>) -> Held {
        let list = anchor.zip(self.revocations.as_deref()).and_then(|(a, text)| {
            VerifiedList::from_file_text(text, a)
                .inspect_err(|error| {
                    tracing::warn!(%error, "the revocation list kept in the state does not verify; ignoring it");
                })
                .ok()
        });
        Held::new(list)
    }

    /// Offers a verified list: kept if newer than the one held (never rolled back).
    pub fn offer_revocations(
        &mut self,
        anchor: &TrustAnchor,
        list: VerifiedList,
    ) -> Result<Offer, RevocationError> {
        let mut held = self.held_revocations(Some(anchor));
        let offer = held.offer(list)?;
        if offer == Offer::Newer {
            self.revocations = held.list().map(|l| l.to_file_text().trim().to_owned());
        }
        Ok(offer)
    }

    /// The remembered host certificates that `held` does not revoke: the only ones evidence
    /// may be verified through.
    pub fn live_certificates(&self, held: &Held) -> Vec<HostCertificate> {
        self.certificates()
            .into_iter()
            .filter(|c| held.revokes_certificate(c).is_none())
            .collect()
    }

    /// The entry revoking this client's MAK, if it is a MAK client and the list has one (R25,
    /// X7: its activation ends).
    pub fn revoked_mak(&self, held: &Held) -> Option<Entry> {
        let key = self.key.filter(|k| k.kind() == KeyKind::Mak)?;
        held.revokes_mak(key.serial())
    }

    /// Why this installation's license was taken back, in words: its MAK is revoked, or the
    /// host whose answer activated it is.
    pub fn revoked_reason(&self, held: &Held) -> Option<String> {
        if let Some(e) = self.revoked_mak(held) {
            return Some(format!("{}; activate again with another key", describe(&e)));
        }
        let fp = self.evidence.activation_host()?;
        let cert = self
            .certificates()
            .into_iter()
            .find(|c| fingerprint(c) == fp)?;
        let e = held.revokes_certificate(&cert)?;
        Some(format!(
            "the host that activated this machine was revoked: {}; activating again with another host",
            describe(&e)
        ))
    }
}
