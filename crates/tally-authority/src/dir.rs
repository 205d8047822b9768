//! An authority directory: `authority.key` (secret, mode 0600) and `authority.pub`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use tally_core::trust::{armor, labels, parse_secret};

use crate::{Authority, AuthorityError};

/// File name of the secret root key.
pub const SECRET_FILE: &str = "authority.key";
/// File name of the public key that clients trust.
pub const PUBLIC_FILE: &str = "authority.pub";
/// File name of the operator token (mode 0600).
pub const TOKEN_FILE: &str = "operator.token";
/// File name of the authority database.
pub const DB_FILE: &str = "authority.db";

/// Writes `contents` to `path` with mode 0600, creating it; refuses to overwrite.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// The armored text of an authority public key file.
pub fn public_file_text(authority: &Authority) -> String {
    armor(labels::AUTHORITY_PUBLIC, authority.public().as_bytes())
}

/// Creates a new authority in `dir` (made if missing). Returns the authority and the path of
/// its public key file.
pub fn init(dir: &Path) -> Result<(Authority, PathBuf), AuthorityError> {
    fs::create_dir_all(dir)?;
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
    fs::write(&public, public_file_text(&authority))?;
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
        }
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            load(empty.path()),
            Err(AuthorityError::Missing(_))
        ));
    }
}
