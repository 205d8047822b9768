//! An authority directory: the root key (`authority.key`, mode 0600, or `pkcs11.toml` naming
//! the token that holds it, X8), `authority.pub`, the operator token, the SQLite database, and
//! after a root rollover `authority.rollover` (the statements from the first root to this one)
//! and `previous-roots.mac` (the MAC keys of the roots before, mode 0600).

use std::fs;
use std::path::{Path, PathBuf};

use tally_core::trust::{armor, dearmor, labels, parse_secret};
use tally_db::fsmode;

use crate::signer::{SignerError, TokenConfig};
use crate::{Authority, AuthorityError};

/// File name of the secret root key.
pub const SECRET_FILE: &str = "authority.key";
/// File name of the public key that clients trust.
pub const PUBLIC_FILE: &str = "authority.pub";
/// File name of the operator token (mode 0600).
pub const TOKEN_FILE: &str = "operator.token";
/// File name of the authority database (defined by the store, which opens it).
pub use crate::store::DB_FILE;
/// File name of the token configuration of a token-backed root (X8): module, token and key
/// labels, never the PIN or the key.
pub const TOKEN_CONFIG_FILE: &str = "pkcs11.toml";
/// File name of the rollover statements from the first root to this authority's (X8).
pub const ROLLOVER_FILE: &str = "authority.rollover";
/// File name of the key-authenticator MAC keys of the roots this authority was rolled over
/// from (X8; mode 0600): keys they issued keep checking here.
pub const PREVIOUS_MAC_FILE: &str = "previous-roots.mac";
/// Label of one line of [`PREVIOUS_MAC_FILE`].
pub const MAC_KEY_LABEL: &str = "tally-authority-mac-key-v1";

/// Writes `contents` to `path` with mode 0600 (whatever the umask), creating it; refuses to
/// overwrite.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    fsmode::write_new(path, contents.as_bytes(), fsmode::PRIVATE_FILE)
}

/// X4: narrows what an older Tally or a loose umask left too open in an authority directory,
/// each change logged with the path and both modes: the directory (0700), the root key and the
/// operator token (0600), the public key (0644). The database is narrowed when it is opened.
pub fn tighten(dir: &Path) -> std::io::Result<()> {
    fsmode::tighten(dir, fsmode::PRIVATE_DIR)?;
    for (name, max) in [
        (SECRET_FILE, fsmode::PRIVATE_FILE),
        (TOKEN_FILE, fsmode::PRIVATE_FILE),
        (PREVIOUS_MAC_FILE, fsmode::PRIVATE_FILE),
        (PUBLIC_FILE, fsmode::PUBLIC_FILE),
    ] {
        fsmode::tighten(&dir.join(name), max)?;
    }
    Ok(())
}

/// The armored text of an authority public key file.
pub fn public_file_text(authority: &Authority) -> String {
    armor(labels::AUTHORITY_PUBLIC, authority.public().as_bytes())
}

/// Whether `dir` holds an authority (a key file or a token configuration).
pub fn exists(dir: &Path) -> bool {
    dir.join(SECRET_FILE).exists() || dir.join(TOKEN_CONFIG_FILE).exists()
}

/// Creates a new authority in `dir` (made if missing). Returns the authority and the path of
/// its public key file.
pub fn init(dir: &Path) -> Result<(Authority, PathBuf), AuthorityError> {
    // X4: the directory holds the root key: only its owner may enter it, whatever the umask.
    fsmode::create_dir(dir, fsmode::PRIVATE_DIR)?;
    if exists(dir) {
        return Err(AuthorityError::AlreadyExists(dir.display().to_string()));
    }
    let key = tally_core::trust::generate_key();
    write_private(
        &dir.join(SECRET_FILE),
        &armor(labels::AUTHORITY_SECRET, &key.to_bytes()),
    )?;
    finish_init(dir, Authority::from_key(key))
}

/// Creates a new authority in `dir` whose root key is generated in (or, with `use_existing`,
/// already in) the PKCS#11 token of `config` (X8). Writes `pkcs11.toml` and public data only:
/// no key and no PIN ever reaches the directory.
pub fn init_token(
    dir: &Path,
    config: TokenConfig,
    pin: &str,
    use_existing: bool,
) -> Result<(Authority, PathBuf), AuthorityError> {
    fsmode::create_dir(dir, fsmode::PRIVATE_DIR)?;
    if exists(dir) {
        return Err(AuthorityError::AlreadyExists(dir.display().to_string()));
    }
    let text = toml::to_string(&config).map_err(|e| AuthorityError::Rollover(e.to_string()))?;
    let authority = open_token(config, pin, Some(use_existing))?;
    authority.check_deterministic()?;
    fsmode::write_new(
        &dir.join(TOKEN_CONFIG_FILE),
        format!(
            "# The root key of this authority is in a PKCS#11 token (X8). The PIN comes from\n\
             # TALLY_PKCS11_PIN or pin_file; neither the PIN nor the key is ever written here.\n{text}"
        )
        .as_bytes(),
        fsmode::PUBLIC_FILE,
    )?;
    finish_init(dir, authority)
}

/// Opens the root key in a token; `init` is `Some(use_existing)` when a new authority is made
/// (generate the key pair, or take the existing one).
#[cfg(feature = "pkcs11")]
fn open_token(
    config: TokenConfig,
    pin: &str,
    init: Option<bool>,
) -> Result<Authority, AuthorityError> {
    let signer = match init {
        Some(use_existing) => crate::pkcs11::TokenSigner::generate(config, pin, use_existing)?,
        None => crate::pkcs11::TokenSigner::open(config, pin)?,
    };
    Authority::from_signer(Box::new(signer))
}

#[cfg(not(feature = "pkcs11"))]
fn open_token(
    _config: TokenConfig,
    _pin: &str,
    _init: Option<bool>,
) -> Result<Authority, AuthorityError> {
    Err(SignerError::Unsupported.into())
}

/// Writes the public key file and the operator token of a new authority.
fn finish_init(dir: &Path, authority: Authority) -> Result<(Authority, PathBuf), AuthorityError> {
    let public = dir.join(PUBLIC_FILE);
    fsmode::write_atomic(
        &public,
        public_file_text(&authority).as_bytes(),
        fsmode::PUBLIC_FILE,
    )?;
    let token: [u8; 32] = rand::RngExt::random(&mut rand::rng());
    write_private(
        &dir.join(TOKEN_FILE),
        &format!("{}\n", tally_core::trust::to_hex(&token)),
    )?;
    Ok((authority, public))
}

/// The operator token of the authority in `dir`.
pub fn operator_token(dir: &Path) -> Result<String, AuthorityError> {
    Ok(fs::read_to_string(dir.join(TOKEN_FILE))?.trim().to_owned())
}

/// Opens the service of the authority in `dir` (its keys and its database).
pub fn open_service(
    dir: &Path,
    clock: std::sync::Arc<dyn tally_core::time::Clock>,
) -> Result<crate::service::Service, AuthorityError> {
    let authority = load(dir)?;
    let store = crate::store::SqliteAuthorityStore::open(&dir.join(DB_FILE))?;
    Ok(crate::service::Service::new(
        authority,
        std::sync::Arc::new(store),
        clock,
    ))
}

/// Opens the service of the authority in `dir` with its state in `database`: a PostgreSQL URL,
/// or `None` for the SQLite file in `dir` (see [`crate::store::open`]). The keys and the
/// operator token stay files in `dir` either way.
pub async fn open_service_on(
    dir: &Path,
    database: Option<&str>,
    clock: std::sync::Arc<dyn tally_core::time::Clock>,
) -> Result<crate::service::Service, AuthorityError> {
    let authority = load(dir)?;
    let store = crate::store::open(dir, database).await?;
    Ok(crate::service::Service::new(authority, store, clock))
}

/// Makes `dir` remember the database an authority runs on (`tally authority run --database
/// URL`), so later commands on `dir` find it without the flag: the URL without its password in
/// `dir/database.url`, the password in `dir/database.password` (0600); `None` or `sqlite` (the
/// SQLite file in `dir`) forgets any. See [`tally_db::remembered`].
pub fn remember_database(
    dir: &Path,
    database: Option<&str>,
) -> Result<(), tally_db::remembered::RememberError> {
    match database {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            tally_db::remembered::record(dir, url)
        }
        Some(_) => tally_db::remembered::forget(dir),
        // Nothing given: the remembered database (if any) was used; keep it.
        None => Ok(()),
    }
}

/// Loads the authority in `dir`: its root key from `authority.key` or from the token named in
/// `pkcs11.toml` (the PIN from `TALLY_PKCS11_PIN` or the configured PIN file), and the MAC
/// keys of the roots it was rolled over from.
pub fn load(dir: &Path) -> Result<Authority, AuthorityError> {
    let secret = dir.join(SECRET_FILE);
    if secret.exists() || dir.join(PREVIOUS_MAC_FILE).exists() {
        tighten(dir)?;
    }
    let authority = match fs::read_to_string(&secret) {
        Ok(text) => Authority::from_key(parse_secret(labels::AUTHORITY_SECRET, &text)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let config = token_config(dir)?;
            let pin = config.pin()?;
            open_token(config, &pin, None)?
        }
        Err(e) => return Err(e.into()),
    };
    Ok(authority.with_previous_mac_keys(previous_mac_keys(dir)?))
}

/// The token configuration of the authority in `dir`.
pub fn token_config(dir: &Path) -> Result<TokenConfig, AuthorityError> {
    let path = dir.join(TOKEN_CONFIG_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AuthorityError::Missing(dir.display().to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    toml::from_str(&text).map_err(|e| {
        AuthorityError::Signer(SignerError::Token {
            operation: "reading pkcs11.toml",
            token: path.display().to_string(),
            reason: e.to_string(),
        })
    })
}

/// The MAC keys in `previous-roots.mac`, if any.
pub fn previous_mac_keys(dir: &Path) -> Result<Vec<[u8; 32]>, AuthorityError> {
    let text = match fs::read_to_string(dir.join(PREVIOUS_MAC_FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            dearmor(MAC_KEY_LABEL, line)?
                .try_into()
                .map_err(|_| tally_core::trust::FileFormatError::Damaged(MAC_KEY_LABEL).into())
        })
        .collect()
}

/// X4: writes a public output of the authority (a signed catalog or revocation list, a
/// certificate, a log head, a confirmation) as 0644 whatever the umask, replacing `path`
/// atomically, so a reader never sees half a file.
pub fn write_public(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    fsmode::write_atomic(path, contents, fsmode::PUBLIC_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_load_gives_the_same_authority_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, public) = init(dir.path()).expect("init");
        assert!(public.exists());
        let b = load(dir.path()).expect("load");
        assert_eq!(a.public(), b.public());
        assert!(matches!(
            init(dir.path()),
            Err(AuthorityError::AlreadyExists(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(SECRET_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            assert_eq!(fsmode::mode_of(&public), Some(fsmode::PUBLIC_FILE));
            // X4: a loose directory and key are narrowed when the authority is loaded.
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
            fs::set_permissions(
                dir.path().join(SECRET_FILE),
                fs::Permissions::from_mode(0o644),
            )
            .expect("chmod");
            load(dir.path()).expect("load");
            assert_eq!(fsmode::mode_of(dir.path()), Some(fsmode::PRIVATE_DIR));
            assert_eq!(
                fsmode::mode_of(&dir.path().join(SECRET_FILE)),
                Some(fsmode::PRIVATE_FILE)
            );
        }
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            load(empty.path()),
            Err(AuthorityError::Missing(_))
        ));
    }
}
