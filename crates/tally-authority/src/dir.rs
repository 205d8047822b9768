//! An authority directory: `authority.key` (secret, mode 0600) and `authority.pub`.

use std::fs;
use std::path::{Path, PathBuf};

use tally_core::trust::{armor, labels, parse_secret};
use tally_store::fsmode;

use crate::{Authority, AuthorityError};

/// File name of the secret root key.
pub const SECRET_FILE: &str = "authority.key";
/// File name of the public key that clients trust.
pub const PUBLIC_FILE: &str = "authority.pub";
/// File name of the operator token (mode 0600).
pub const TOKEN_FILE: &str = "operator.token";
/// File name of the authority database.
pub const DB_FILE: &str = "authority.db";

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

/// Creates a new authority in `dir` (made if missing). Returns the authority and the path of
/// its public key file.
pub fn init(dir: &Path) -> Result<(Authority, PathBuf), AuthorityError> {
    // X4: the directory holds the root key: only its owner may enter it, whatever the umask.
    fsmode::create_dir(dir, fsmode::PRIVATE_DIR)?;
    let secret = dir.join(SECRET_FILE);
    if secret.exists() {
        return Err(AuthorityError::AlreadyExists(dir.display().to_string()));
    }
    let authority = Authority::generate();
    write_private(
        &secret,
        &armor(labels::AUTHORITY_SECRET, &authority.secret().to_bytes()),
    )?;
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

/// Loads the authority in `dir`.
pub fn load(dir: &Path) -> Result<Authority, AuthorityError> {
    let secret = dir.join(SECRET_FILE);
    if secret.exists() {
        tighten(dir)?;
    }
    let text = match fs::read_to_string(&secret) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(AuthorityError::Missing(dir.display().to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Authority::from_key(parse_secret(
        labels::AUTHORITY_SECRET,
        &text,
    )?))
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
