//! `tally host migrate --to URL` (issue 21 part 6): moves a single host's embedded database
//! (pools' tables, registry, events, refusal counters) into a fleet's PostgreSQL database, then
//! makes the data directory remember the fleet database, so the next `tally host run` counts on
//! where the single host stopped. See [`tally_store::to_fleet`] for what is moved and refused.
//!
//! The data directory's lock is held throughout: a running host refuses the move, and no host
//! can start on the directory while it runs. The SQLite file is left as it was (a backup of the
//! single host's last state); the host no longer uses it once the directory remembers the fleet.

use std::path::Path;

/// A database URL as it may be shown: host, port and database, never the password.
pub use tally_store::pg::describe;
use tally_store::to_fleet::{self, Moved};

use crate::HostError;
use crate::lock::DataDirLock;
use crate::paths;
use crate::store::Database;

/// How many rows a move of `dir`'s embedded database will copy (for a progress bar).
pub fn rows_to_move(dir: &Path) -> Result<u64, HostError> {
    let db = dir.join(paths::HOST_DB);
    if !db.exists() {
        return Err(HostError::NoDatabase(dir.to_owned()));
    }
    Ok(to_fleet::count_rows(&db)?)
}

/// Moves the embedded database of the host in `dir` into the fleet database at `url`, naming
/// the host `host_name` [default: as a running host names itself] in the moved rows; calls
/// `progress(rows_done)` as it goes. On success `dir` remembers `url`.
pub async fn to_fleet(
    dir: &Path,
    url: &str,
    host_name: Option<&str>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Moved, HostError> {
    let Database::Postgres(url) = Database::parse(Some(url))? else {
        return Err(HostError::Invalid(
            "--to needs a postgres://USER[:PASSWORD]@HOST[:PORT]/DB URL (the fleet's database)"
                .into(),
        ));
    };
    let db = dir.join(paths::HOST_DB);
    if !db.exists() {
        return Err(HostError::NoDatabase(dir.to_owned()));
    }
    // Refuses while a host runs on `dir`, and keeps one from starting during the move.
    let _lock = DataDirLock::acquire(dir)?;
    let pool = tally_store::pg::connect(&url)
        .await
        .map_err(crate::store::explain_auth(dir, &url))?;
    let served_by = match host_name {
        Some(name) => name.to_owned(),
        None => crate::runtime::default_host_name(dir)?,
    };
    let moved = to_fleet::sqlite_to_postgres(&db, &pool, &served_by, progress).await?;
    crate::remember::record(dir, &Database::Postgres(url))?;
    Ok(moved)
}
