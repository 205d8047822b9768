//! The authority: the vendor's root of trust.
//!
//! The authority owns an Ed25519 root key. From it it derives a MAC key that makes and checks
//! the authenticator inside host keys and MAKs (so only the authority can mint or validate
//! them), and it certifies a host's public key for the key group and generation of a valid host
//! key (R16, R21, R22). This crate is the CLI-only core; the HTTP service, activation limits
//! (R23) and MAKs (R25) grow here.
//!
//! # Layout
//! - [`Authority`]: key issuance, key checking, certification; [`Authority::sign`] is the one
//!   entry point for every signature by the root.
//! - [`signer`]: [`signer::RootSigner`], the root key as a file or in a PKCS#11 token (X8).
//! - `pkcs11` (feature `pkcs11`): the token signer over `cryptoki`.
//! - [`rollover`]: signing a root rollover statement, carrying an authority over to a new root.
//! - [`dir`]: the on-disk layout of an authority directory.
//! - [`server`]: `tally authority run`: bind a directory's service, serve until shutdown.
//! - [`store`]: the authority's state (SQLite file, or PostgreSQL for several processes).
//! - [`transparency`] (a part of [`service`]): the log of everything the authority signs (X8):
//!   appends, signed tree heads, inclusion and consistency proofs.

use std::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::{Digest, Sha256};
use signer::{KeyFileSigner, RootSigner, SignerError};
use tally_core::keys::{HostKeyFields, KeyError, KeyGroup, KeyKind, ProductKey};
use tally_core::time::Timestamp;
use tally_core::trust::authority_id;
use tally_proto::{CertificateBody, HostCertificate};
use thiserror::Error;

mod api;
pub mod dir;
pub mod fuzzing;
pub mod http;
mod log_http;
/// Offline activation IDs (the encoding lives in `tally_core::digits`).
pub mod offline {
    pub use tally_core::digits::*;
}
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
pub mod rollover;
pub mod server;
pub mod service;
pub mod signer;
pub mod store;
pub use service::transparency;

/// How long a host certificate is valid: hosts never contact the authority again after
/// activation (R22), so it is long.
pub const CERTIFICATE_LIFETIME_DAYS: i64 = 20 * 365;

/// Why the authority refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The key is not well formed or of the wrong kind.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The key's authenticator is wrong: it was not issued by this authority.
    #[error("this key was not issued by this authority (its authenticator does not verify)")]
    NotIssuedHere,
    /// A generation outside 0–15.
    #[error("generation must be between 0 and 15")]
    Generation,
    /// Reading or writing the authority directory failed.
    #[error("authority directory: {0}")]
    Io(#[from] std::io::Error),
    /// A file in the authority directory is damaged.
    #[error("authority directory: {0}")]
    File(#[from] tally_core::trust::FileFormatError),
    /// `init` would overwrite an existing authority.
    #[error("an authority already exists in {0}; refusing to overwrite its keys")]
    AlreadyExists(String),
    /// The authority's database could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// No authority in the directory.
    #[error("no authority in {0}: run `tally authority init --dir {0}` first")]
    Missing(String),
    /// The root key could not sign (a token error, a wrong PIN...).
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// A rollover could not be made.
    #[error("{0}")]
    Rollover(String),
}

/// The vendor's authority.
pub struct Authority {
    signer: Box<dyn RootSigner>,
    public: VerifyingKey,
    /// The key-authenticator MAC key of this root: new keys carry its authenticator.
    mac_key: [u8; 32],
    /// The MAC keys of the roots this authority was rolled over from (X8): keys they issued
    /// keep checking.
    previous_mac_keys: Vec<[u8; 32]>,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("public", &tally_core::trust::to_hex(self.public.as_bytes()))
            .field("signer", &self.signer.describe())
            .finish_non_exhaustive()
    }
}

/// The message a token-backed root signs to derive its MAC key (never published, never signed
/// for any other purpose; no verifier accepts this context).
const MAC_SEED_MESSAGE: &[u8] = b"tally/v1/key-authenticator-seed\0";

impl Authority {
    /// A new authority with a fresh random root key (held in memory, as a key file does).
    pub fn generate() -> Self {
        Self::from_key(tally_core::trust::generate_key())
    }

    /// The authority of this root key (a key file). Its MAC key is derived from the secret
    /// key's bytes, as it always was, so the keys it issued keep checking.
    pub fn from_key(signing: SigningKey) -> Self {
        let mac_key = Sha256::new()
            .chain_update(b"tally/v1/key-authenticator\0")
            .chain_update(signing.to_bytes())
            .finalize()
            .into();
        Self {
            public: signing.verifying_key(),
            signer: Box::new(KeyFileSigner::new(signing)),
            mac_key,
            previous_mac_keys: Vec::new(),
        }
    }

    /// The authority of a root key the process never sees (a PKCS#11 token). The token cannot
    /// give out the secret bytes, so the MAC key is derived from the root's signature over a
    /// fixed, domain-separated message: Ed25519 (RFC 8032) is deterministic, so the token gives
    /// the same 64 bytes, and the same MAC key, every time. Only a holder of the root key can
    /// compute it.
    pub fn from_signer(signer: Box<dyn RootSigner>) -> Result<Self, AuthorityError> {
        let seed = signer.sign(MAC_SEED_MESSAGE)?;
        let mac_key = Sha256::new()
            .chain_update(b"tally/v1/key-authenticator-token\0")
            .chain_update(seed)
            .finalize()
            .into();
        Ok(Self {
            public: signer.public(),
            signer,
            mac_key,
            previous_mac_keys: Vec::new(),
        })
    }

    /// Checks that the signer's signatures are deterministic (the MAC derivation of
    /// [`Self::from_signer`] relies on it); `init` runs it once on a new token key.
    pub fn check_deterministic(&self) -> Result<(), AuthorityError> {
        if self.signer.sign(MAC_SEED_MESSAGE)? != self.signer.sign(MAC_SEED_MESSAGE)? {
            return Err(AuthorityError::Signer(SignerError::NotEd25519 {
                key: self.signer.describe(),
                token: String::new(),
                reason: "two signatures of one message differ: Tally needs deterministic \
                         Ed25519 (RFC 8032) to derive its key-authenticator key"
                    .into(),
            }));
        }
        Ok(())
    }

    /// Adds the MAC keys of the roots this authority was rolled over from (X8).
    pub fn with_previous_mac_keys(mut self, keys: Vec<[u8; 32]>) -> Self {
        self.previous_mac_keys = keys;
        self
    }

    /// Every MAC key this authority checks with, its own first.
    pub fn mac_keys(&self) -> Vec<[u8; 32]> {
        let mut keys = vec![self.mac_key];
        keys.extend(self.previous_mac_keys.iter().copied());
        keys
    }

    /// Signs `msg` with the root key (in the file or in the token): the one entry point for
    /// every signature the authority makes. Callers put a domain-separation context in `msg`.
    pub fn sign(&self, msg: &[u8]) -> Result<[u8; 64], AuthorityError> {
        Ok(self.signer.sign(msg)?)
    }

    /// Where the root key is.
    pub fn signer_description(&self) -> String {
        self.signer.describe()
    }

    /// The public key clients trust.
    pub fn public(&self) -> VerifyingKey {
        self.public
    }

    /// X8: signs a tree head of the transparency log (context `tally/v1/tree-head\0`).
    pub fn sign_tree_head(
        &self,
        head: tally_log::TreeHead,
    ) -> Result<tally_log::SignedTreeHead, AuthorityError> {
        Ok(head.with_signature(self.sign(&head.signed_bytes())?))
    }

    fn authenticator(&self, key: ProductKey) -> u64 {
        authenticator(&self.mac_key, key)
    }

    /// Whether `key`'s authenticator verifies under this root's MAC key or a previous root's.
    fn authenticator_verifies(&self, key: ProductKey) -> bool {
        self.mac_keys()
            .iter()
            .any(|mac_key| authenticator(mac_key, key) == key.authenticator())
    }

    /// Issues a host key for `group` and `generation` with a random serial.
    pub fn issue_host_key(
        &self,
        group: KeyGroup,
        generation: u8,
    ) -> Result<ProductKey, AuthorityError> {
        self.issue_host_key_with_serial(group, generation, rand::rng().random())
    }

    /// Issues a host key with a chosen serial.
    pub fn issue_host_key_with_serial(
        &self,
        group: KeyGroup,
        generation: u8,
        serial: u32,
    ) -> Result<ProductKey, AuthorityError> {
        if generation > 15 {
            return Err(AuthorityError::Generation);
        }
        let unsigned = ProductKey::host(
            HostKeyFields {
                group,
                generation,
                serial,
            },
            0,
        );
        Ok(ProductKey::host(
            HostKeyFields {
                group,
                generation,
                serial,
            },
            self.authenticator(unsigned),
        ))
    }

    /// Issues a MAK with a chosen serial (R25).
    pub fn issue_mak_with_serial(&self, serial: u32) -> ProductKey {
        ProductKey::mak(serial, self.authenticator(ProductKey::mak(serial, 0)))
    }

    /// Checks that a host key or MAK was issued by this authority.
    pub fn check_key(&self, key: ProductKey) -> Result<KeyKind, AuthorityError> {
        if key.kind() == KeyKind::Setup {
            return Err(KeyError::WrongKind {
                expected: KeyKind::Host,
                actual: KeyKind::Setup,
            }
            .into());
        }
        if !self.authenticator_verifies(key) {
            return Err(AuthorityError::NotIssuedHere);
        }
        Ok(key.kind())
    }

    /// Certifies `host_public` for the group and generation of `host_key` (R16, R21).
    pub fn certify(
        &self,
        host_key: ProductKey,
        host_public: &VerifyingKey,
        now: Timestamp,
    ) -> Result<HostCertificate, AuthorityError> {
        let fields = host_key.host_fields()?;
        self.check_key(host_key)?;
        let body = certificate_body(fields, host_public, &self.public(), now);
        let signature = self.sign(&body.signed_bytes())?;
        Ok(HostCertificate { body, signature })
    }
}

/// The authenticator of `key` under `mac_key`: the first 8 bytes of an HMAC-SHA-256.
fn authenticator(mac_key: &[u8; 32], key: ProductKey) -> u64 {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(mac_key) else {
        unreachable!("HMAC takes any key length")
    };
    mac.update(b"tally/v1/key\0");
    mac.update(&key.authenticated_bytes());
    let out = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

/// The certificate body for a host key's fields. Validity is day-aligned (from the day before
/// `issued`, for 20 years) so that an offline confirmation needs to carry only the day.
pub fn certificate_body(
    fields: HostKeyFields,
    host_public: &VerifyingKey,
    authority: &VerifyingKey,
    issued: Timestamp,
) -> CertificateBody {
    let day = issued.millis().div_euclid(86_400_000);
    CertificateBody {
        host_key: host_public.to_bytes(),
        key_group: fields.group.rank(),
        generation: fields.generation,
        key_serial: fields.serial,
        // A day of slack for clients whose clocks run behind.
        not_before: (day - 1) * 86_400,
        not_after: (day + CERTIFICATE_LIFETIME_DAYS) * 86_400,
        authority_id: authority_id(authority),
    }
}

#[cfg(test)]
mod tests {
    use tally_core::catalog::Catalog;
    use tally_core::trust::{TrustAnchor, TrustError, generate_key};

    use super::*;

    #[test]
    fn issued_keys_check_and_forged_ones_do_not() {
        let a = Authority::generate();
        let key = a
            .issue_host_key(KeyGroup::ServerB, 1)
            .expect("valid generation");
        assert_eq!(a.check_key(key).expect("own key"), KeyKind::Host);
        let fields = key.host_fields().expect("host key");
        let forged = ProductKey::host(fields, key.authenticator() ^ 1);
        assert!(matches!(
            a.check_key(forged),
            Err(AuthorityError::NotIssuedHere)
        ));
        let other = Authority::generate();
        assert!(matches!(
            other.check_key(key),
            Err(AuthorityError::NotIssuedHere)
        ));
    }

    // R16: the certificate verifies under the authority key only.
    #[test]
    fn r16_certificate_chain_verifies_only_under_its_authority() {
        let a = Authority::generate();
        let host = generate_key();
        let now = Timestamp(1_800_000_000_000);
        let key = a.issue_host_key(KeyGroup::ServerC, 1).expect("key");
        let cert = a.certify(key, &host.verifying_key(), now).expect("certify");
        let verified = TrustAnchor::new(a.public())
            .verify_certificate(&cert, now)
            .expect("verifies");
        assert_eq!(verified.coverage().group, KeyGroup::ServerC);
        let stranger = TrustAnchor::new(Authority::generate().public());
        assert_eq!(
            stranger.verify_certificate(&cert, now).err(),
            Some(TrustError::UnknownAuthority)
        );
        let mut tampered = cert.clone();
        tampered.body.key_group = 0;
        tampered.body.generation = 9;
        assert_eq!(
            TrustAnchor::new(a.public())
                .verify_certificate(&tampered, now)
                .err(),
            Some(TrustError::BadCertificateSignature)
        );
        let later = now.plus_days(CERTIFICATE_LIFETIME_DAYS + 1);
        assert!(matches!(
            TrustAnchor::new(a.public()).verify_certificate(&cert, later),
            Err(TrustError::CertificateExpired { .. })
        ));
    }

    // R21: group and generation order.
    #[test]
    fn r21_coverage_follows_group_and_generation_order() {
        let a = Authority::generate();
        let host = generate_key();
        let now = Timestamp(1_800_000_000_000);
        let catalog = Catalog::demo();
        let anchor = TrustAnchor::new(a.public());
        for group in KeyGroup::ALL {
            let key = a.issue_host_key(group, 1).expect("key");
            let cert = a.certify(key, &host.verifying_key(), now).expect("certify");
            let cov = anchor
                .verify_certificate(&cert, now)
                .expect("verifies")
                .coverage();
            for e in catalog.editions() {
                assert_eq!(cov.covers(e), e.group <= group, "{group} vs {}", e.name);
            }
            // Generation 0 covers none of the generation-1 editions.
            let old = a
                .certify(
                    a.issue_host_key(group, 0).expect("key"),
                    &host.verifying_key(),
                    now,
                )
                .expect("c");
            let cov = anchor
                .verify_certificate(&old, now)
                .expect("verifies")
                .coverage();
            assert!(catalog.editions().iter().all(|e| !cov.covers(e)));
        }
    }

    #[test]
    fn setup_keys_are_not_certified() {
        let a = Authority::generate();
        let setup = Catalog::demo().editions()[0].setup_key;
        assert!(matches!(
            a.certify(setup, &generate_key().verifying_key(), Timestamp(0)),
            Err(AuthorityError::Key(KeyError::WrongKind { .. }))
        ));
    }
}

#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod log_api_tests;
