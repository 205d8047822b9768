//! Who signs for the authority (X8): the root key as a file (`authority.key`), or a key that
//! never leaves a PKCS#11 token (module [`crate::pkcs11`], cargo feature `pkcs11`).
//!
//! Every signature the authority makes (certificates, MAK claims, signed catalogs, rollover
//! statements, and whatever else is added later) goes through [`RootSigner::sign`] by way of
//! [`crate::Authority::sign`]; nothing else holds the root secret.

use std::fmt;
use std::path::PathBuf;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Signs bytes with the authority's root key: a plain Ed25519 signature (RFC 8032).
pub trait RootSigner: Send + Sync {
    /// The root public key.
    fn public(&self) -> VerifyingKey;
    /// An Ed25519 signature over `msg`.
    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], SignerError>;
    /// Where the key is, for logs and errors ("key file", "PKCS#11 token 'x', key 'y'").
    fn describe(&self) -> String;
}

impl fmt::Debug for dyn RootSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The root key held in memory, read from `authority.key` (the behaviour before X8).
pub struct KeyFileSigner(SigningKey);

impl KeyFileSigner {
    /// Signs with `key`.
    pub fn new(key: SigningKey) -> Self {
        Self(key)
    }
}

impl RootSigner for KeyFileSigner {
    fn public(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], SignerError> {
        Ok(self.0.sign(msg).to_bytes())
    }

    fn describe(&self) -> String {
        "key file".into()
    }
}

/// `pkcs11.toml` in an authority directory: which token holds the root key. It names the
/// module, the token and the key, and optionally a file holding the PIN; never the PIN itself.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The PKCS#11 module (shared library) of the token.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The label of the Ed25519 key pair in the token.
    pub key_label: String,
    /// A file holding the user PIN (`TALLY_PKCS11_PIN` overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_file: Option<PathBuf>,
}

/// Environment variable holding the token's user PIN.
pub const PIN_ENV: &str = "TALLY_PKCS11_PIN";

impl TokenConfig {
    /// The user PIN: `TALLY_PKCS11_PIN`, else the first line of `pin_file`.
    pub fn pin(&self) -> Result<String, SignerError> {
        if let Ok(pin) = std::env::var(PIN_ENV)
            && !pin.is_empty()
        {
            return Ok(pin);
        }
        let Some(file) = &self.pin_file else {
            return Err(SignerError::NoPin {
                token: self.token_label.clone(),
            });
        };
        let text = std::fs::read_to_string(file).map_err(|e| SignerError::PinFile {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        Ok(text.lines().next().unwrap_or_default().trim().to_owned())
    }
}

/// Why the root key could not sign (or be found).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SignerError {
    /// The PKCS#11 module could not be loaded.
    #[error(
        "cannot load the PKCS#11 module {path}: {reason} (check --pkcs11-module: is the token's library installed, e.g. Debian's softhsm2 for /usr/lib/softhsm/libsofthsm2.so?)"
    )]
    Module {
        /// The module path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// No token with that label.
    #[error(
        "no PKCS#11 token labelled '{label}' in {module} (tokens present: {present}): check --token-label, and for SoftHSM2 the SOFTHSM2_CONF its tokens live under"
    )]
    NoToken {
        /// The label asked for.
        label: String,
        /// The module.
        module: PathBuf,
        /// The labels present, comma-separated, or "none".
        present: String,
    },
    /// The token refused the PIN.
    #[error(
        "the token refused the PIN (CKR_PIN_INCORRECT) for token '{token}': check --pin-file or {PIN_ENV} (several wrong PINs lock the token)"
    )]
    PinIncorrect {
        /// The token label.
        token: String,
    },
    /// The token is locked after wrong PINs.
    #[error(
        "the token '{token}' is locked (CKR_PIN_LOCKED): its security officer must reset the user PIN"
    )]
    PinLocked {
        /// The token label.
        token: String,
    },
    /// No PIN was given.
    #[error("no PIN for token '{token}': pass --pin-file FILE or set {PIN_ENV}")]
    NoPin {
        /// The token label.
        token: String,
    },
    /// The PIN file could not be read.
    #[error("cannot read the PIN file {path}: {reason}")]
    PinFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// No key pair with that label.
    #[error(
        "no Ed25519 key labelled '{key}' in token '{token}': check --key-label, or create it with `tally authority init` without --use-existing"
    )]
    NoKey {
        /// The key label.
        key: String,
        /// The token label.
        token: String,
    },
    /// `init` would create a second key under a label already in use.
    #[error(
        "token '{token}' already holds a key labelled '{key}': pass --use-existing to use it, or another --key-label"
    )]
    KeyExists {
        /// The key label.
        key: String,
        /// The token label.
        token: String,
    },
    /// The key or its signatures are not plain Ed25519.
    #[error("the key '{key}' in token '{token}' is not usable as an Ed25519 root: {reason}")]
    NotEd25519 {
        /// The key label.
        key: String,
        /// The token label.
        token: String,
        /// What is wrong.
        reason: String,
    },
    /// Another PKCS#11 call failed.
    #[error("PKCS#11 {operation} failed on token '{token}': {reason}")]
    Token {
        /// What was attempted.
        operation: &'static str,
        /// The token label.
        token: String,
        /// The module's answer.
        reason: String,
    },
    /// This build has no PKCS#11 support.
    #[error(
        "this authority's root key is in a PKCS#11 token, but this tally was built without the `pkcs11` feature"
    )]
    Unsupported,
}
