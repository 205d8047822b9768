//! Taking trust back (X7): the authority's signed revocation list, verified.
//!
//! A list names host certificates (by fingerprint), host keys (every certificate issued for
//! the key's serial) and MAKs, each with a reason. Lists only grow: each change gets a higher
//! serial, and whoever holds a list keeps the highest serial it verified ([`Held::offer`]
//! refuses a lower one), so an attacker who replays an old list takes nothing back. The list is
//! signed by the authority's root, so any host, file or update may carry it.

use ed25519_dalek::{Signature, VerifyingKey};
use tally_proto::HostCertificate;
use tally_proto::revocation::{Entry, MAX_LIST_BYTES, Reason, RevocationList, Subject};
use thiserror::Error;

use crate::time::Timestamp;
use crate::trust::{FileFormatError, TrustAnchor, armor, authority_id, dearmor, fingerprint};

/// The label of a revocation list file.
pub const LABEL: &str = "tally-revocation-list-v1";

/// Why a list was not accepted.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevocationError {
    /// The bytes are not a revocation list.
    #[error("the revocation list is damaged: {0}")]
    Damaged(String),
    /// Signed by another authority.
    #[error("the revocation list was signed by another authority (not the one trusted here)")]
    UnknownAuthority,
    /// The signature does not verify.
    #[error("the revocation list's signature is invalid (forged or altered)")]
    BadSignature,
    /// Older than the one already held: never rolled back.
    #[error(
        "this revocation list (serial {offered}) is older than the one already held (serial {held}); kept serial {held}"
    )]
    Older {
        /// The offered serial.
        offered: u32,
        /// The serial held.
        held: u32,
    },
    /// Signed by a root a rollover retired, after its retirement (X8).
    #[error(
        "the revocation list was signed by a root retired at {until} (root rollover) after its retirement; lists now come from the new root"
    )]
    RootRetired {
        /// When the root was retired.
        until: Timestamp,
    },
    /// Signed by an older root than the list already held (X8).
    #[error(
        "this revocation list is signed by an older root (generation {offered}) than the one already held (generation {held}); kept the held list"
    )]
    OlderRoot {
        /// The offered list's root generation.
        offered: u32,
        /// The held list's.
        held: u32,
    },
    /// More entries than the format allows.
    #[error("the revocation list would be longer than 1 MiB")]
    TooLarge,
}

/// A list whose signature verified under the trusted root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedList {
    list: RevocationList,
    bytes: Vec<u8>,
    /// The signing root's generation in the anchor it was verified under (0: the first root).
    generation: u32,
}

impl VerifiedList {
    /// Verifies `bytes` (the binary encoding) under `anchor`.
    pub fn verify(bytes: &[u8], anchor: &TrustAnchor) -> Result<Self, RevocationError> {
        let list = RevocationList::from_bytes(bytes)
            .map_err(|e| RevocationError::Damaged(e.to_string()))?;
        // Signed by the root trusted, or by a root a verified rollover handed trust to (X8).
        let (generation, key, retired) = anchor
            .root_by_id(&list.authority_id)
            .ok_or(RevocationError::UnknownAuthority)?;
        let mut verified = Self::verify_with(list, &key)?;
        // X8: a root a rollover retired signs no list after its retirement, so its key, kept
        // or leaked, cannot revoke anything once the new root is in force.
        if let Some(until) = retired
            && verified.list.issued_at > until.millis()
        {
            return Err(RevocationError::RootRetired { until });
        }
        verified.generation = generation;
        Ok(verified)
    }

    /// The signing root's generation (0: the root of `authority.pub`, one more per rollover).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Verifies a decoded list under `key`.
    pub fn verify_with(list: RevocationList, key: &VerifyingKey) -> Result<Self, RevocationError> {
        if list.authority_id != authority_id(key) {
            return Err(RevocationError::UnknownAuthority);
        }
        key.verify_strict(
            &list.signed_bytes(),
            &Signature::from_bytes(&list.signature),
        )
        .map_err(|_| RevocationError::BadSignature)?;
        let bytes = list.to_bytes();
        Ok(Self {
            list,
            bytes,
            generation: 0,
        })
    }

    /// Reads an armored list file (`tally-revocation-list-v1 HEX`) and verifies it.
    pub fn from_file_text(text: &str, anchor: &TrustAnchor) -> Result<Self, RevocationError> {
        let bytes = dearmor(LABEL, text).map_err(|e: FileFormatError| {
            RevocationError::Damaged(format!("{e} (expected a file starting with {LABEL})"))
        })?;
        Self::verify(&bytes, anchor)
    }

    /// The armored text of the list.
    pub fn to_file_text(&self) -> String {
        armor(LABEL, &self.bytes)
    }

    /// The list.
    pub fn list(&self) -> &RevocationList {
        &self.list
    }

    /// The serial.
    pub fn serial(&self) -> u32 {
        self.list.serial
    }

    /// The encoding (what hosts relay).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The entry that revokes `cert`, if any: its fingerprint, or its host key's serial.
    pub fn revokes_certificate(&self, cert: &HostCertificate) -> Option<Entry> {
        let fp = fingerprint(cert);
        self.find(|s| {
            *s == Subject::Certificate(fp) || *s == Subject::HostKey(cert.body.key_serial)
        })
    }

    /// The entry that revokes the MAK with this serial, if any.
    pub fn revokes_mak(&self, serial: u32) -> Option<Entry> {
        self.find(|s| *s == Subject::Mak(serial))
    }

    fn find(&self, pred: impl Fn(&Subject) -> bool) -> Option<Entry> {
        self.list.entries.iter().find(|e| pred(&e.subject)).copied()
    }
}

/// What a holder does with an offered list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Higher serial: it replaces the held one.
    Newer,
    /// The serial already held: nothing changes.
    Same,
}

/// The newest list a client or host holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held(Option<VerifiedList>);

impl Held {
    /// Holds `list` (or nothing).
    pub fn new(list: Option<VerifiedList>) -> Self {
        Self(list)
    }

    /// The list held.
    pub fn list(&self) -> Option<&VerifiedList> {
        self.0.as_ref()
    }

    /// The serial held; 0 when none.
    pub fn serial(&self) -> u32 {
        self.0.as_ref().map_or(0, VerifiedList::serial)
    }

    /// Takes `offered` if its serial is higher; refuses a lower one (no rollback), and one
    /// signed by an older root than the held list's (after a rollover, X8: only the roots
    /// from the held list's on may replace it).
    pub fn offer(&mut self, offered: VerifiedList) -> Result<Offer, RevocationError> {
        if let Some(held) = &self.0
            && offered.generation < held.generation
        {
            return Err(RevocationError::OlderRoot {
                offered: offered.generation,
                held: held.generation,
            });
        }
        let held = self.serial();
        match offered.serial() {
            s if self.0.is_some() && s < held => Err(RevocationError::Older { offered: s, held }),
            s if self.0.is_some() && s == held => Ok(Offer::Same),
            _ => {
                self.0 = Some(offered);
                Ok(Offer::Newer)
            }
        }
    }

    /// The entry revoking `cert`, if the held list has one.
    pub fn revokes_certificate(&self, cert: &HostCertificate) -> Option<Entry> {
        self.0.as_ref()?.revokes_certificate(cert)
    }

    /// The entry revoking MAK `serial`, if the held list has one.
    pub fn revokes_mak(&self, serial: u32) -> Option<Entry> {
        self.0.as_ref()?.revokes_mak(serial)
    }
}

/// Builds and signs list `serial` of `entries` (the authority's side). `sign` signs the given
/// bytes with the root key whose public half is `key`.
pub fn build<E>(
    key: &VerifyingKey,
    serial: u32,
    issued_at: Timestamp,
    entries: Vec<Entry>,
    sign: impl FnOnce(&[u8]) -> Result<[u8; 64], E>,
) -> Result<Result<VerifiedList, RevocationError>, E> {
    let mut list = RevocationList {
        authority_id: authority_id(key),
        serial,
        issued_at: issued_at.millis(),
        entries,
        signature: [0; 64],
    };
    if 25 + 64 + 42 * list.entries.len() > MAX_LIST_BYTES {
        return Ok(Err(RevocationError::TooLarge));
    }
    list.signature = sign(&list.signed_bytes())?;
    Ok(VerifiedList::verify_with(list, key))
}

/// A human sentence for a revocation entry: what, why and when.
pub fn describe(entry: &Entry) -> String {
    let what = match entry.subject {
        Subject::Certificate(fp) => format!("host certificate {}", &crate::hex::to_hex(&fp)[..16]),
        Subject::HostKey(serial) => format!("host key serial {serial}"),
        Subject::Mak(serial) => format!("MAK serial {serial}"),
    };
    format!(
        "{what} was revoked by the vendor ({}) at {}",
        reason_text(entry.reason),
        Timestamp(entry.revoked_at)
    )
}

/// The reason, in words.
pub fn reason_text(reason: Reason) -> &'static str {
    match reason {
        Reason::Unspecified => "no reason given",
        Reason::KeyCompromise => "key compromise",
        Reason::Superseded => "superseded by a reactivation",
        Reason::CessationOfOperation => "no longer in use",
        Reason::Withdrawn => "withdrawn by the vendor",
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use ed25519_dalek::{Signer, SigningKey};
    use tally_proto::CertificateBody;

    use super::*;

    fn root() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn list(key: &SigningKey, serial: u32, entries: Vec<Entry>) -> VerifiedList {
        build::<Infallible>(
            &key.verifying_key(),
            serial,
            Timestamp(1000),
            entries,
            |m| Ok(key.sign(m).to_bytes()),
        )
        .unwrap_or_else(|e| match e {})
        .expect("fits")
    }

    fn cert(serial: u32, host_key: u8) -> HostCertificate {
        HostCertificate {
            body: CertificateBody {
                host_key: [host_key; 32],
                key_group: 1,
                generation: 0,
                key_serial: serial,
                not_before: 0,
                not_after: 10,
                authority_id: authority_id(&root().verifying_key()),
            },
            signature: [0; 64],
        }
    }

    fn entry(subject: Subject) -> Entry {
        Entry {
            subject,
            reason: Reason::KeyCompromise,
            revoked_at: 5,
        }
    }

    // X7: a certificate is revoked by its fingerprint or by its host key's serial.
    #[test]
    fn x7_certificates_are_revoked_by_fingerprint_or_key_serial() {
        let a = cert(1, 1);
        let b = cert(2, 2);
        let c = cert(3, 3);
        let l = list(
            &root(),
            1,
            vec![
                entry(Subject::Certificate(fingerprint(&a))),
                entry(Subject::HostKey(2)),
                entry(Subject::Mak(9)),
            ],
        );
        assert!(l.revokes_certificate(&a).is_some());
        assert!(l.revokes_certificate(&b).is_some());
        assert!(l.revokes_certificate(&c).is_none());
        assert!(l.revokes_mak(9).is_some());
        assert!(l.revokes_mak(3).is_none());
    }

    // X7: the held list never goes back to a lower serial.
    #[test]
    fn x7_an_older_list_never_replaces_a_newer_one() {
        let mut held = Held::default();
        assert_eq!(held.serial(), 0);
        assert_eq!(held.offer(list(&root(), 2, vec![])), Ok(Offer::Newer));
        assert_eq!(held.offer(list(&root(), 2, vec![])), Ok(Offer::Same));
        assert_eq!(
            held.offer(list(&root(), 1, vec![entry(Subject::HostKey(1))])),
            Err(RevocationError::Older {
                offered: 1,
                held: 2
            })
        );
        assert_eq!(held.serial(), 2);
        assert_eq!(held.offer(list(&root(), 3, vec![])), Ok(Offer::Newer));
        assert_eq!(held.serial(), 3);
    }

    #[test]
    fn a_forged_or_foreign_list_is_refused_and_files_round_trip() {
        let anchor = TrustAnchor::new(root().verifying_key());
        let good = list(&root(), 4, vec![entry(Subject::Mak(1))]);
        let text = good.to_file_text();
        assert_eq!(
            VerifiedList::from_file_text(&text, &anchor),
            Ok(good.clone())
        );

        let other = SigningKey::from_bytes(&[8; 32]);
        let foreign = list(&other, 4, vec![]);
        assert_eq!(
            VerifiedList::verify(foreign.bytes(), &anchor),
            Err(RevocationError::UnknownAuthority)
        );
        let mut tampered = good.bytes().to_vec();
        tampered[12] ^= 1; // the serial
        assert_eq!(
            VerifiedList::verify(&tampered, &anchor),
            Err(RevocationError::BadSignature)
        );
        assert!(matches!(
            VerifiedList::from_file_text("tally-host-certificate-v1 00", &anchor),
            Err(RevocationError::Damaged(_))
        ));
    }

    fn signed_at(key: &SigningKey, serial: u32, at: i64) -> Vec<u8> {
        build::<Infallible>(&key.verifying_key(), serial, Timestamp(at), vec![], |m| {
            Ok(key.sign(m).to_bytes())
        })
        .unwrap_or_else(|e| match e {})
        .expect("fits")
        .list()
        .to_bytes()
    }

    // X7 + X8: after a rollover, the retired root signs no list after its retirement, and a
    // list of the new root is never replaced by one of the old root, whatever its serial.
    #[test]
    fn x8_a_retired_root_cannot_revoke_after_its_rollover() {
        let old = root();
        let new = SigningKey::from_bytes(&[9; 32]);
        let mut anchor = TrustAnchor::new(old.verifying_key());
        anchor.push_successor(new.verifying_key(), Some(Timestamp(5_000)));

        // Made while the old root was in force: still accepted (generation 0).
        let before = VerifiedList::verify(&signed_at(&old, 3, 4_000), &anchor).expect("before");
        assert_eq!(before.generation(), 0);
        // Made by the old root after its retirement: refused.
        let after = VerifiedList::verify(&signed_at(&old, 4, 6_000), &anchor);
        assert!(
            matches!(after, Err(RevocationError::RootRetired { until }) if until == Timestamp(5_000)),
            "{after:?}"
        );
        // The new root's list replaces the old one's; an old-root list, even with a higher
        // serial and an old date, never replaces it.
        let newer = VerifiedList::verify(&signed_at(&new, 5, 6_000), &anchor).expect("new root");
        assert_eq!(newer.generation(), 1);
        let mut held = Held::new(Some(before));
        assert_eq!(held.offer(newer).expect("newer"), Offer::Newer);
        let backdated =
            VerifiedList::verify(&signed_at(&old, 900, 4_500), &anchor).expect("backdated");
        assert!(matches!(
            held.offer(backdated),
            Err(RevocationError::OlderRoot {
                offered: 0,
                held: 1
            })
        ));
        assert_eq!(held.serial(), 5);
    }
}
