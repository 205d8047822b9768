//! The database a data directory remembers (issue 21 part 6; files and rules in
//! [`tally_store::remembered`]). A host started with `--database URL` (or
//! `TALLY_DATABASE_URL`, or the config file's `database`) records it in the data directory; every
//! later command on that directory (`tally host status`, `clients`, `events`, `report`, `check`,
//! the dashboard of the running host, a restart) finds the database without the variable.
//!
//! Which database applies, first match wins:
//! 1. `--database` / `TALLY_DATABASE_URL` (`sqlite` names the embedded file explicitly);
//! 2. the config file's `database` key;
//! 3. `DATA_DIR/database.url` (+ `DATA_DIR/database.password`, 0600);
//! 4. the embedded SQLite file `DATA_DIR/tally.db`.
//!
//! A given URL without a password takes the remembered password when it names the same user,
//! servers and database.

use std::path::Path;

use tally_store::remembered;

use crate::HostError;
use crate::store::Database;

/// Resolves the database of a data directory: `explicit` (flag, environment or config file) is
/// parsed, its password filled in from `dir` when it has none and names the remembered
/// database; without `explicit`, the remembered database or the embedded file. Returns the
/// database and whether it came from the directory.
pub fn resolve(dir: &Path, explicit: Option<&str>) -> Result<(Database, bool), HostError> {
    match Database::parse(explicit)? {
        Database::Postgres(url) => {
            let resolved = remembered::resolve(dir, Some(&url))?;
            Ok((Database::Postgres(resolved.map_or(url, |r| r.url)), false))
        }
        // Given as `sqlite` (or empty): the embedded file, whatever is remembered.
        Database::Embedded if explicit.is_some() => Ok((Database::Embedded, false)),
        Database::Embedded => Ok(match remembered::read(dir)? {
            Some(r) => (Database::Postgres(r.url), true),
            None => (Database::Embedded, false),
        }),
    }
}

/// Records the database a host now runs on in `dir` (the embedded file: forgets any URL).
pub fn record(dir: &Path, database: &Database) -> Result<(), HostError> {
    match database {
        Database::Postgres(url) => remembered::record(dir, url)?,
        Database::Embedded => remembered::forget(dir)?,
    }
    Ok(())
}
