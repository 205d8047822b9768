//! The root key in a PKCS#11 token (X8): an Ed25519 key pair (`CKK_EC_EDWARDS`) generated inside
//! the token, private part sensitive and never extractable, signing with `CKM_EDDSA`. Built with
//! the cargo feature `pkcs11` (on by default in the `tally` binary). The module (shared library)
//! is loaded at run time, so a build needs no token software.
//!
//! Each signature is checked against the public key before it is returned: a token that
//! answered with something other than a plain Ed25519 signature is caught at the authority,
//! not at a client.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::signer::{RootSigner, SignerError, TokenConfig};

/// DER of the OID 1.3.101.112 (id-Ed25519, RFC 8410): the curve in `CKA_EC_PARAMS`.
const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// A root key in a token.
pub struct TokenSigner {
    config: TokenConfig,
    public: VerifyingKey,
    key: ObjectHandle,
    /// A PKCS#11 session may not be used from two threads at once.
    session: Mutex<Session>,
}

/// One initialised context per module in the process: `C_Initialize` may be called once per
/// library, and a rollover between two tokens of one module opens it twice.
fn context(module: &Path) -> Result<Pkcs11, SignerError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(ctx) = map.get(module) {
        return Ok(ctx.clone());
    }
    let module_error = |reason: String| SignerError::Module {
        path: module.to_owned(),
        reason,
    };
    if !module.exists() {
        return Err(module_error("no such file".into()));
    }
    let ctx = Pkcs11::new(module).map_err(|e| module_error(e.to_string()))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(module_error(format!("C_Initialize: {e}"))),
    }
    map.insert(module.to_owned(), ctx.clone());
    Ok(ctx)
}

fn token_error(config: &TokenConfig, operation: &'static str) -> impl Fn(CkError) -> SignerError {
    let token = config.token_label.clone();
    move |e| SignerError::Token {
        operation,
        token: token.clone(),
        reason: e.to_string(),
    }
}

/// Opens a logged-in read-write session on the token named in `config`.
fn session(config: &TokenConfig, pin: &str) -> Result<Session, SignerError> {
    let ctx = context(&config.module)?;
    let slots = ctx
        .get_slots_with_token()
        .map_err(token_error(config, "C_GetSlotList"))?;
    let mut present = Vec::new();
    let mut found = None;
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        let label = info.label().trim().to_owned();
        if label == config.token_label {
            found = Some(slot);
            break;
        }
        if !label.is_empty() {
            present.push(label);
        }
    }
    let slot = found.ok_or_else(|| SignerError::NoToken {
        label: config.token_label.clone(),
        module: config.module.clone(),
        present: if present.is_empty() {
            "none".into()
        } else {
            present.join(", ")
        },
    })?;
    let session = ctx
        .open_rw_session(slot)
        .map_err(token_error(config, "C_OpenSession"))?;
    match session.login(UserType::User, Some(&AuthPin::from(pin.to_owned()))) {
        // Login is per application and token: a second session of this process is in already
        // (its PIN was checked by the first; the CLI logs in once per process).
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => {
            Err(SignerError::PinIncorrect {
                token: config.token_label.clone(),
            })
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(SignerError::PinLocked {
            token: config.token_label.clone(),
        }),
        Err(e) => Err(token_error(config, "C_Login")(e)),
    }
}

fn find(
    session: &Session,
    config: &TokenConfig,
    class: ObjectClass,
) -> Result<Option<ObjectHandle>, SignerError> {
    let found = session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::Label(config.key_label.as_bytes().to_vec()),
        ])
        .map_err(token_error(config, "C_FindObjects"))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(SignerError::NotEd25519 {
            key: config.key_label.clone(),
            token: config.token_label.clone(),
            reason: "several keys carry this label; give the root a label of its own".into(),
        }),
    }
}

/// The 32-byte key from `CKA_EC_POINT`: a DER OCTET STRING around it (PKCS#11 3.0), or the raw
/// bytes (some modules).
fn public_key(
    session: &Session,
    config: &TokenConfig,
    handle: ObjectHandle,
) -> Result<VerifyingKey, SignerError> {
    let not_ed25519 = |reason: &str| SignerError::NotEd25519 {
        key: config.key_label.clone(),
        token: config.token_label.clone(),
        reason: reason.into(),
    };
    let attrs = session
        .get_attributes(handle, &[AttributeType::EcPoint])
        .map_err(token_error(config, "C_GetAttributeValue"))?;
    let point = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| not_ed25519("the public key has no CKA_EC_POINT"))?;
    let raw: &[u8] = match point.as_slice() {
        [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest,
        raw if raw.len() == 32 => raw,
        _ => return Err(not_ed25519("CKA_EC_POINT is not a 32-byte Ed25519 point")),
    };
    let bytes: [u8; 32] = raw
        .try_into()
        .map_err(|_| not_ed25519("CKA_EC_POINT is not a 32-byte Ed25519 point"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| not_ed25519("the point is not on Ed25519"))
}

impl TokenSigner {
    /// Opens the root key named in `config`, logging in with `pin`.
    pub fn open(config: TokenConfig, pin: &str) -> Result<Self, SignerError> {
        let session = session(&config, pin)?;
        let no_key = || SignerError::NoKey {
            key: config.key_label.clone(),
            token: config.token_label.clone(),
        };
        let key = find(&session, &config, ObjectClass::PRIVATE_KEY)?.ok_or_else(no_key)?;
        let public_handle = find(&session, &config, ObjectClass::PUBLIC_KEY)?.ok_or_else(no_key)?;
        let public = public_key(&session, &config, public_handle)?;
        let signer = Self {
            config,
            public,
            key,
            session: Mutex::new(session),
        };
        // A key pair whose halves do not belong together, or a module whose EdDSA is not plain
        // Ed25519, is refused here rather than producing signatures no client accepts.
        signer.sign(b"tally/v1/token-self-test\0")?;
        Ok(signer)
    }

    /// Generates the root key pair in the token (`init`), or with `use_existing` takes the
    /// one already there under the key label.
    pub fn generate(
        config: TokenConfig,
        pin: &str,
        use_existing: bool,
    ) -> Result<Self, SignerError> {
        let session = session(&config, pin)?;
        let existing = find(&session, &config, ObjectClass::PRIVATE_KEY)?;
        match (existing, use_existing) {
            (Some(_), false) => {
                return Err(SignerError::KeyExists {
                    key: config.key_label.clone(),
                    token: config.token_label.clone(),
                });
            }
            (Some(_), true) => {}
            (None, true) => {
                return Err(SignerError::NoKey {
                    key: config.key_label.clone(),
                    token: config.token_label.clone(),
                });
            }
            (None, false) => {
                let label = Attribute::Label(config.key_label.as_bytes().to_vec());
                let public_template = [
                    Attribute::Token(true),
                    Attribute::Private(false),
                    Attribute::Verify(true),
                    Attribute::EcParams(ED25519_OID.to_vec()),
                    label.clone(),
                ];
                let private_template = [
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Sign(true),
                    label,
                ];
                session
                    .generate_key_pair(
                        &Mechanism::EccEdwardsKeyPairGen,
                        &public_template,
                        &private_template,
                    )
                    .map_err(token_error(&config, "C_GenerateKeyPair"))?;
            }
        }
        drop(session);
        Self::open(config, pin)
    }

    /// The token configuration.
    pub fn config(&self) -> &TokenConfig {
        &self.config
    }
}

impl RootSigner for TokenSigner {
    fn public(&self) -> VerifyingKey {
        self.public
    }

    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], SignerError> {
        let session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        let sig = session
            .sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                self.key,
                msg,
            )
            .map_err(token_error(&self.config, "C_Sign"))?;
        drop(session);
        let not_ed25519 = |reason: &str| SignerError::NotEd25519 {
            key: self.config.key_label.clone(),
            token: self.config.token_label.clone(),
            reason: reason.into(),
        };
        let sig: [u8; 64] = sig
            .try_into()
            .map_err(|_| not_ed25519("C_Sign did not return 64 bytes"))?;
        self.public
            .verify_strict(msg, &Signature::from_bytes(&sig))
            .map_err(|_| not_ed25519("its signature does not verify under its public key"))?;
        Ok(sig)
    }

    fn describe(&self) -> String {
        format!(
            "PKCS#11 token '{}', key '{}' ({})",
            self.config.token_label,
            self.config.key_label,
            self.config.module.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use tally_test_support::softhsm::{MODULE, SoftHsm};

    use super::*;
    use crate::Authority;

    fn config(label: &str, key: &str) -> TokenConfig {
        TokenConfig {
            module: MODULE.into(),
            token_label: label.into(),
            key_label: key.into(),
            pin_file: None,
        }
    }

    // X8: a key generated in a real SoftHSM2 token signs plain, deterministic Ed25519 that
    // verifies under its public key; reopening finds the same key; the errors name the cause.
    // SoftHSM2 reads SOFTHSM2_CONF when the module is initialised, once per process, so the
    // body runs in a child process of this test binary with the test's own token directory.
    #[test]
    fn x8_token_signer_signs_ed25519_and_errors_name_the_cause() {
        const CHILD: &str = "TALLY_TOKEN_SIGNER_CHILD";
        if std::env::var_os(CHILD).is_some() {
            token_signer_body();
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let Some(hsm) = SoftHsm::new(tmp.path()) else {
            return;
        };
        hsm.init_token("unit", "1234");
        let exe = std::env::current_exe().expect("test binary");
        let out = std::process::Command::new(exe)
            .args([
                "pkcs11::tests::x8_token_signer_signs_ed25519_and_errors_name_the_cause",
                "--exact",
                "--nocapture",
            ])
            .envs(hsm.env())
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        let text = String::from_utf8_lossy(&out.stderr);
        eprintln!("{text}");
        assert!(out.status.success(), "{text}");
        assert!(text.contains("token signature:"), "the body ran: {text}");
    }

    fn token_signer_body() {
        // Before any session of this process is logged in: PKCS#11 login state is per
        // application and token, so later logins of this process find it logged in already.
        assert!(matches!(
            TokenSigner::generate(config("unit", "root"), "9999", false),
            Err(SignerError::PinIncorrect { .. })
        ));
        let signer = TokenSigner::generate(config("unit", "root"), "1234", false).expect("gen");
        let public = signer.public();
        let start = std::time::Instant::now();
        for i in 0..200u32 {
            let msg = i.to_be_bytes();
            let sig = signer.sign(&msg).expect("sign");
            public
                .verify_strict(&msg, &Signature::from_bytes(&sig))
                .expect("verifies");
        }
        eprintln!("token signature: {:?} each", start.elapsed() / 200);
        let a = Authority::from_signer(Box::new(signer)).expect("authority");
        a.check_deterministic().expect("deterministic");
        let reopened = TokenSigner::open(config("unit", "root"), "1234").expect("open");
        assert_eq!(reopened.public(), public);
        let b = Authority::from_signer(Box::new(reopened)).expect("authority");
        assert_eq!(a.mac_keys(), b.mac_keys(), "the MAC key is stable");

        assert!(matches!(
            TokenSigner::open(config("unit", "nope"), "1234"),
            Err(SignerError::NoKey { .. })
        ));
        assert!(matches!(
            TokenSigner::generate(config("unit", "root"), "1234", false),
            Err(SignerError::KeyExists { .. })
        ));
        assert!(matches!(
            TokenSigner::open(config("absent", "root"), "1234"),
            Err(SignerError::NoToken { .. })
        ));
    }
}
