//! A directory that remembers its database (issue 21 part 6): a host's data directory or an
//! authority's directory keeps the PostgreSQL URL it last ran with, so every later command on
//! that directory finds the database without `--database` or `TALLY_DATABASE_URL` in the shell.
//!
//! Two files, both written atomically with explicit modes (X4, [`crate::fsmode`]):
//! - `DIR/database.url`: the URL **without** its password (0644: nothing secret in it);
//! - `DIR/database.password`: the password alone, on one line (0600). Never printed, never
//!   logged, never in `--json` output.
//!
//! Which database a command uses (first that applies): a URL given with `--database` /
//! `TALLY_DATABASE_URL`, then the config file's `database` key (hosts), then the remembered
//! URL, then the embedded SQLite file. A given URL without a password takes the remembered
//! password when it names the same user, servers and database as the remembered URL, so
//! `--database postgres://tally@db/fleet` works on a directory that knows the password.
//! [`Origin`] says where a password came from, so an error about it can say which file or flag
//! to fix ([`explain`]).

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::fsmode;

/// The remembered URL, without its password.
pub const URL_FILE: &str = "database.url";
/// The remembered password (0600).
pub const PASSWORD_FILE: &str = "database.password";

/// A remembered database that cannot be read or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RememberError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file could not be written or removed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `database.url` holds something else than a `postgres://` URL.
    #[error(
        "{} does not hold a postgres:// URL; delete it, or start once with --database URL to replace it",
        path.display()
    )]
    Invalid {
        /// The file.
        path: PathBuf,
    },
}

/// Where the password of the URL in use came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// In the URL given with `--database`, `TALLY_DATABASE_URL` or the config file.
    Given,
    /// From the directory's password file (this path).
    File(PathBuf),
    /// No password at all.
    None,
}

/// A database URL ready to connect with, and where its password came from.
#[derive(Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The URL, password included: never print it (use [`crate::pg::describe`]).
    pub url: String,
    /// Whether the URL came from the directory (`DIR/database.url`) rather than a flag.
    pub remembered: bool,
    /// Where its password came from.
    pub password: Origin,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Resolved")
            .field("url", &split(&self.url).0)
            .field("remembered", &self.remembered)
            .field("password", &self.password)
            .finish()
    }
}

/// Splits a `postgres://` URL into the URL without its password and the password (decoded):
/// the `USER:PASSWORD@` user information, or a `password=` query parameter.
pub fn split(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let mut password = None;
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, pw)) => {
                password = Some(decode(pw));
                format!("{user}@{hosts}")
            }
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|p| match p.strip_prefix("password=") {
                    Some(pw) => {
                        password = Some(decode(pw));
                        false
                    }
                    None => !p.is_empty(),
                })
                .collect();
            if kept.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
        None => tail.to_owned(),
    };
    (format!("{scheme}://{authority}{tail}"), password)
}

/// `url` (without a password) with `password` put into its user information, encoded.
pub fn join(url: &str, password: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let encoded = encode(password);
    let authority = match authority.rsplit_once('@') {
        Some((user, hosts)) => format!("{user}:{encoded}@{hosts}"),
        // libpq's default user is the OS user; a password needs a user to go with it.
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits: at most 255.
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

fn read_opt(path: &Path) -> Result<Option<String>, RememberError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RememberError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The database `dir` remembers, password joined in; `None` when it remembers none.
pub fn read(dir: &Path) -> Result<Option<Resolved>, RememberError> {
    let path = dir.join(URL_FILE);
    let Some(text) = read_opt(&path)? else {
        return Ok(None);
    };
    let url = text.trim();
    if !is_postgres(url) {
        return Err(RememberError::Invalid { path });
    }
    Ok(Some(with_password(dir, url, true)?))
}

/// The URL to use given `explicit` (a flag, the environment or a config file): `explicit`
/// itself, its password filled in from `dir` when it has none and names the remembered
/// database; else the remembered database; `None` when neither (the embedded database).
pub fn resolve(dir: &Path, explicit: Option<&str>) -> Result<Option<Resolved>, RememberError> {
    let Some(given) = explicit else {
        return read(dir);
    };
    let (bare, password) = split(given);
    if password.is_some() {
        return Ok(Some(Resolved {
            url: given.to_owned(),
            remembered: false,
            password: Origin::Given,
        }));
    }
    let same = read_opt(&dir.join(URL_FILE))?.is_some_and(|t| t.trim() == bare);
    if same {
        return Ok(Some(with_password(dir, given, false)?));
    }
    Ok(Some(Resolved {
        url: given.to_owned(),
        remembered: false,
        password: Origin::None,
    }))
}

fn with_password(dir: &Path, url: &str, remembered: bool) -> Result<Resolved, RememberError> {
    let path = dir.join(PASSWORD_FILE);
    Ok(match read_opt(&path)? {
        // The whole line is the password; only the line end is not part of it.
        Some(pw) if !pw.trim_end_matches(['\n', '\r']).is_empty() => Resolved {
            url: join(url, pw.trim_end_matches(['\n', '\r'])),
            remembered,
            password: Origin::File(path),
        },
        _ => Resolved {
            url: url.to_owned(),
            remembered,
            password: Origin::None,
        },
    })
}

/// Makes `dir` remember `url`: the URL without its password in `database.url` (0644), the
/// password in `database.password` (0600). A URL without a password keeps the password file
/// only if it names the same database as before (it may be where the password came from).
pub fn record(dir: &Path, url: &str) -> Result<(), RememberError> {
    let (bare, password) = split(url);
    let url_path = dir.join(URL_FILE);
    let pw_path = dir.join(PASSWORD_FILE);
    let before = read_opt(&url_path)?;
    let write = |path: &Path, text: &str, mode: u32| {
        fsmode::write_atomic(path, text.as_bytes(), mode).map_err(|source| RememberError::Write {
            path: path.to_owned(),
            source,
        })
    };
    match password {
        Some(pw) => write(&pw_path, &format!("{pw}\n"), fsmode::PRIVATE_FILE)?,
        None if before.is_some_and(|b| b.trim() == bare) => {}
        None => remove(&pw_path)?,
    }
    write(&url_path, &format!("{bare}\n"), fsmode::PUBLIC_FILE)
}

/// Makes `dir` forget its database (it runs on the embedded file again).
pub fn forget(dir: &Path) -> Result<(), RememberError> {
    remove(&dir.join(PASSWORD_FILE))?;
    remove(&dir.join(URL_FILE))
}

fn remove(path: &Path) -> Result<(), RememberError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RememberError::Write {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Where the password of `url` came from, as seen from `dir`: its password file when the URL
/// carries the remembered password, else the URL, else none. For errors that say what to fix
/// ([`explain`]).
pub fn origin(dir: &Path, url: &str) -> Origin {
    let (bare, password) = split(url);
    let Some(password) = password else {
        return Origin::None;
    };
    match read(dir) {
        Ok(Some(r)) if split(&r.url) == (bare, Some(password)) => r.password,
        _ => Origin::Given,
    }
}

/// Adds to an authentication error ([`crate::pg::PgError::Auth`]) what to fix, given where the
/// password came from; any other error is returned as it is.
#[cfg(feature = "postgres")]
pub fn explain(err: crate::DbError, origin: &Origin) -> crate::DbError {
    use std::sync::Arc;

    use crate::DbError;
    use crate::pg::PgError;
    let (path, source) = match &err {
        DbError::Open { path, source } => (path.clone(), source.clone()),
        _ => return err,
    };
    let Some(PgError::Auth {
        servers,
        user,
        problem,
        ..
    }) = source.downcast_ref::<PgError>()
    else {
        return err;
    };
    let give = format!(
        "give it in the URL, postgres://{user}:PASSWORD@{servers}, with --database or TALLY_DATABASE_URL (the directory then keeps it in {PASSWORD_FILE}, mode 0600)"
    );
    let advice = match (problem, origin) {
        (crate::pg::AuthProblem::Missing, _) => give,
        (_, Origin::File(file)) => format!(
            "the password came from {}: write the right one there (one line, mode 0600), or {give}",
            file.display()
        ),
        (_, _) => format!("correct the password in the URL; {give}"),
    };
    DbError::Open {
        path,
        source: Arc::new(PgError::Auth {
            servers: servers.clone(),
            user: user.clone(),
            problem: problem.clone(),
            advice,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_takes_the_password_out_and_join_puts_it_back() {
        let (bare, pw) =
            split("postgres://tally:s%40cr%3At@db1:5432,db2:5432/fleet?sslmode=require");
        assert_eq!(
            bare,
            "postgres://tally@db1:5432,db2:5432/fleet?sslmode=require"
        );
        assert_eq!(pw.as_deref(), Some("s@cr:t"));
        assert_eq!(
            join(&bare, "s@cr:t"),
            "postgres://tally:s%40cr%3At@db1:5432,db2:5432/fleet?sslmode=require"
        );
        let (bare, pw) = split("postgresql://tally@db/fleet?password=x%20y&sslmode=disable");
        assert_eq!(bare, "postgresql://tally@db/fleet?sslmode=disable");
        assert_eq!(pw.as_deref(), Some("x y"));
        let (bare, pw) = split("postgres://tally@db/fleet?password=pw");
        assert_eq!(bare, "postgres://tally@db/fleet");
        assert_eq!(pw.as_deref(), Some("pw"));
        assert_eq!(
            split("postgres://db/fleet"),
            ("postgres://db/fleet".into(), None)
        );
    }

    // The URL file has no password; the password file is 0600; a URL given without a password
    // takes the remembered one only for the same database.
    #[test]
    fn a_directory_remembers_its_database_and_keeps_the_password_apart() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        assert_eq!(read(dir).expect("read"), None);
        record(dir, "postgres://tally:hunter2@db:5432/fleet").expect("record");
        let url_text = std::fs::read_to_string(dir.join(URL_FILE)).expect("url");
        assert_eq!(url_text, "postgres://tally@db:5432/fleet\n");
        assert_eq!(fsmode::mode_of(&dir.join(PASSWORD_FILE)), Some(0o600));
        let r = read(dir).expect("read").expect("remembered");
        assert_eq!(r.url, "postgres://tally:hunter2@db:5432/fleet");
        assert!(r.remembered);
        assert_eq!(r.password, Origin::File(dir.join(PASSWORD_FILE)));
        assert!(!format!("{r:?}").contains("hunter2"), "{r:?}");

        let same = resolve(dir, Some("postgres://tally@db:5432/fleet")).expect("resolve");
        assert_eq!(
            same.map(|r| r.url).as_deref(),
            Some("postgres://tally:hunter2@db:5432/fleet")
        );
        let other = resolve(dir, Some("postgres://tally@other:5432/fleet"))
            .expect("resolve")
            .expect("given");
        assert_eq!(other.url, "postgres://tally@other:5432/fleet");
        assert_eq!(other.password, Origin::None);
        let given = resolve(dir, Some("postgres://tally:pw2@db:5432/fleet"))
            .expect("resolve")
            .expect("given");
        assert_eq!(given.password, Origin::Given);

        // Same database without a password: the password stays; another database: it goes.
        record(dir, "postgres://tally@db:5432/fleet").expect("record");
        assert!(dir.join(PASSWORD_FILE).exists());
        record(dir, "postgres://tally@other:5432/fleet").expect("record");
        assert!(!dir.join(PASSWORD_FILE).exists());
        forget(dir).expect("forget");
        assert_eq!(read(dir).expect("read"), None);

        std::fs::write(dir.join(URL_FILE), "mysql://x").expect("write");
        assert!(matches!(read(dir), Err(RememberError::Invalid { .. })));
    }
}
