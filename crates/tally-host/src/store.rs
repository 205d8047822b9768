//! The two ways to open a host's database; nothing else in the host opens it.
//!
//! - [`open_for_reading`]: for commands that look at a host's data (status, report, events,
//!   clients, backup) while the host may be running. No writer thread, no migrations: such a
//!   command can never become a second writer or migrate the schema under a running host.
//! - [`open_writer`]: the single writer. The running host opens it (it also prunes old events,
//!   through the writer thread); so do the few commands that must write while no host runs
//!   (recording event 1003 when a host key is installed or activated).

use std::path::Path;

use tally_store::StoreError;
use tally_store::sqlite::{Durability, SqliteStore};

use crate::HostError;
use crate::paths;

/// Opens the database in `dir` read-only. A missing database is [`HostError::NoDatabase`]
/// (nothing is created).
pub fn open_for_reading(dir: &Path) -> Result<SqliteStore, HostError> {
    SqliteStore::open_read_only(&dir.join(paths::HOST_DB)).map_err(|e| match e {
        StoreError::Missing { .. } => HostError::NoDatabase(dir.to_owned()),
        other => HostError::Store(other),
    })
}

/// Opens (creating and migrating as needed) the database in `dir` as its one writer.
pub fn open_writer(dir: &Path, durability: Durability) -> Result<SqliteStore, HostError> {
    std::fs::create_dir_all(dir).map_err(HostError::write(dir))?;
    Ok(SqliteStore::open(&dir.join(paths::HOST_DB), durability)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A read command on a data directory without a database creates none.
    #[test]
    fn reading_a_missing_database_creates_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let result = open_for_reading(tmp.path());
        assert!(matches!(result, Err(HostError::NoDatabase(_))));
        assert!(!tmp.path().join(paths::HOST_DB).exists());
    }
}
