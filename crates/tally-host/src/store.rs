//! Where a host's data lives, and the two ways to open it; nothing else in the host opens it.
//!
//! [`Database`] is the embedded SQLite file in the data directory (the default) or a fleet's
//! PostgreSQL database (`--database postgres://…`, config key `database`, env
//! `TALLY_DATABASE_URL`): hosts that share one form one fleet (X1).
//!
//! - [`open_for_reading`]: for commands that look at a host's data (status, report, events,
//!   clients) while the host may be running. No writer, no migrations: such a command can never
//!   become a second writer or migrate the schema under a running host.
//! - [`open_writer`]: the writer. The running host opens it (it also prunes old events and
//!   registry rows, through the writer); so do the few commands that must write while no host
//!   runs (recording event 1003 when a host key is installed or activated). On SQLite it is the
//!   only writer; on PostgreSQL each host of the fleet has its own, and the database serialises
//!   them (see `tally_store::postgres`).

use std::path::Path;
use std::sync::Arc;

use tally_store::postgres::PgStore;
use tally_store::sqlite::{Durability, SqliteStore};
use tally_store::{Store, StoreError, StoreOptions};

use crate::HostError;
use crate::paths;

/// Where the host's counts, registry and events live.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Database {
    /// `DATA_DIR/tally.db`: one host, no set-up.
    #[default]
    Embedded,
    /// A PostgreSQL URL (`postgres://USER[:PASSWORD]@HOST[:PORT][,HOST[:PORT]…]/DB`); every
    /// host on it is one fleet.
    Postgres(String),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.write_str(&self.describe())
    }
}

impl Database {
    /// Parses `--database`: none, `sqlite` or an empty string for the embedded file, or a
    /// `postgres://` / `postgresql://` URL.
    pub fn parse(url: Option<&str>) -> Result<Self, HostError> {
        match url.map(str::trim) {
            None | Some("" | "sqlite") => Ok(Self::Embedded),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(Self::Postgres(u.to_owned()))
            }
            Some(u) => Err(HostError::Invalid(format!(
                "unsupported database {:?}: give a postgres://USER@HOST[:PORT]/DB URL for a fleet, or leave --database unset for the embedded SQLite file in the data directory",
                shown(u)
            ))),
        }
    }

    /// What to show in logs and errors: the servers and database, never a password.
    pub fn describe(&self) -> String {
        match self {
            Self::Embedded => "embedded SQLite".to_owned(),
            Self::Postgres(url) => format!("PostgreSQL {}", tally_store::pg::describe(url)),
        }
    }

    /// Whether hosts share this database (fleet mode).
    pub fn is_fleet(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }
}

/// How a host opens its store: where, how durable, under which name, with which limits.
#[derive(Clone, Debug, Default)]
pub struct Storage {
    /// Where the data lives.
    pub database: Database,
    /// Commit durability (the embedded file; PostgreSQL's is the server's `synchronous_commit`).
    pub durability: Durability,
    /// This host's name in a fleet's registry and events [default: machine name and the first
    /// 8 hex digits of the certificate fingerprint].
    pub host_name: Option<String>,
    /// Registry cap and the like.
    pub options: StoreOptions,
    /// X6: what the store does with a detected clone (host setting `clones`).
    pub clones: tally_core::clones::ClonePolicy,
}

/// A URL cut before any `@`, so a mistyped URL with a password is not echoed.
fn shown(url: &str) -> &str {
    url.split('@').next_back().unwrap_or(url)
}

/// Opens the host's data read-only. A missing database is [`HostError::NoDatabase`] (nothing
/// is created).
pub async fn open_for_reading(dir: &Path, db: &Database) -> Result<Arc<dyn Store>, HostError> {
    let missing = |e: StoreError| match e {
        StoreError::Missing { .. } => HostError::NoDatabase(dir.to_owned()),
        other => HostError::Store(other),
    };
    Ok(match db {
        Database::Embedded => {
            Arc::new(SqliteStore::open_read_only(&dir.join(paths::HOST_DB)).map_err(missing)?)
        }
        Database::Postgres(url) => {
            let pool = tally_store::pg::connect(url)
                .await
                .map_err(explain_auth(dir, url))?;
            Arc::new(
                PgStore::open_read_only(pool, &db.describe())
                    .await
                    .map_err(missing)?,
            )
        }
    })
}

/// Opens (creating and migrating as needed) the host's database as a writer. `served_by`
/// names this host in a fleet's registry and events.
pub async fn open_writer(
    dir: &Path,
    db: &Database,
    durability: Durability,
    served_by: &str,
    options: StoreOptions,
) -> Result<Arc<dyn Store>, HostError> {
    tally_store::fsmode::create_dir(dir, tally_store::fsmode::PRIVATE_DIR)
        .map_err(HostError::write(dir))?;
    Ok(match db {
        Database::Embedded => Arc::new(SqliteStore::open_with(
            &dir.join(paths::HOST_DB),
            durability,
            options,
        )?),
        Database::Postgres(url) => {
            let pool = tally_store::pg::connect(url)
                .await
                .map_err(explain_auth(dir, url))?;
            Arc::new(PgStore::open_with(pool, served_by, options).await?)
        }
    })
}

/// For `tally_store::pg::connect`'s error: an authentication error says which password to fix
/// (the data directory's password file or the URL).
pub(crate) fn explain_auth(
    dir: &Path,
    url: &str,
) -> impl FnOnce(tally_store::DbError) -> HostError {
    let origin = tally_store::remembered::origin(dir, url);
    move |e| HostError::Store(tally_store::remembered::explain(e, &origin).into())
}

/// Copies an embedded database to `out` while the host runs (`VACUUM INTO`); a fleet's
/// database is backed up with PostgreSQL's own tools.
pub async fn backup(dir: &Path, db: &Database, out: &Path) -> Result<(), HostError> {
    match db {
        Database::Embedded => Ok(SqliteStore::open_read_only(&dir.join(paths::HOST_DB))
            .map_err(|e| match e {
                StoreError::Missing { .. } => HostError::NoDatabase(dir.to_owned()),
                other => HostError::Store(other),
            })?
            .backup_to(out)
            .await?),
        Database::Postgres(_) => Err(HostError::Invalid(
            "a fleet's PostgreSQL database is backed up with pg_dump or pg_basebackup (see OPERATIONS.md, \"Fleet backup\"), not with tally host backup".into(),
        )),
    }
}

/// This machine's name, for a default `host_name`.
pub fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    // A read command on a data directory without a database creates none.
    #[tokio::test]
    async fn reading_a_missing_database_creates_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let result = open_for_reading(tmp.path(), &Database::Embedded).await;
        assert!(matches!(result, Err(HostError::NoDatabase(_))));
        assert!(!tmp.path().join(paths::HOST_DB).exists());
    }

    #[test]
    fn database_urls_parse_and_never_show_a_password() {
        assert_eq!(Database::parse(None).expect("none"), Database::Embedded);
        assert_eq!(
            Database::parse(Some("sqlite")).expect("sqlite"),
            Database::Embedded
        );
        let db =
            Database::parse(Some("postgres://tally:secret@10.0.0.1:5433/fleet")).expect("postgres");
        assert!(db.is_fleet());
        assert!(!format!("{db:?}").contains("secret"), "{db:?}");
        let err = Database::parse(Some("mysql://u:secret@h/db")).expect_err("unsupported");
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(err.to_string().contains("postgres://"), "{err}");
    }
}
