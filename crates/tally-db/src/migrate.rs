//! The one schema migration runner every Tally store uses (the host's store and the
//! authority's, on SQLite and on PostgreSQL).
//!
//! A store passes its migrations as an ordered list of SQL scripts: script `i` (0-based) takes
//! the schema from version `i` to version `i + 1`. The runner applies the missing ones, each in
//! its own transaction together with the new version number, and refuses a database whose
//! version is newer than the list ([`DbError::TooNew`]): an older Tally must never write a
//! schema it does not know.
//!
//! - SQLite keeps the version in `PRAGMA user_version` (one database file per store).
//! - PostgreSQL keeps it in the table `tally_schema`, one row per schema, keyed by the schema's
//!   advisory lock key (several stores may share one database). The runner holds
//!   `pg_advisory_xact_lock(lock_key)` in every migration transaction, so processes that start
//!   at the same moment on an empty database apply each migration exactly once.

#[cfg(feature = "sqlite")]
use std::path::Path;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use std::sync::Arc;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
use crate::DbError;

/// Brings the SQLite database on `conn` (the file `what`, named in errors) to the newest of
/// `migrations`, tracking the version in `PRAGMA user_version`.
#[cfg(feature = "sqlite")]
pub fn sqlite(
    conn: &mut rusqlite::Connection,
    migrations: &[&str],
    what: &Path,
) -> Result<(), DbError> {
    let open_err = |e: rusqlite::Error| DbError::Open {
        path: what.display().to_string(),
        source: Arc::new(e),
    };
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(open_err)?;
    let supported = supported(migrations);
    if version > supported {
        return Err(DbError::TooNew {
            found: version,
            supported,
        });
    }
    for (i, sql) in migrations.iter().enumerate().skip(version.max(0) as usize) {
        // An IMMEDIATE transaction: a second process migrating the same file waits for the
        // first (busy_timeout) instead of failing half-way.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(open_err)?;
        let now: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if now > i as i64 {
            // Another process applied this one while we waited for the lock.
            continue;
        }
        tx.execute_batch(sql).map_err(open_err)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(open_err)?;
        tx.commit().map_err(open_err)?;
    }
    Ok(())
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn supported(migrations: &[&str]) -> i64 {
    i64::try_from(migrations.len()).unwrap_or(i64::MAX)
}

/// Brings the PostgreSQL database on `client` to the newest of `migrations`, under
/// `pg_advisory_xact_lock(lock_key)`; the version is the row of `lock_key` in `tally_schema`.
///
/// Each store uses its own constant `lock_key`, so the host's and the authority's schemas can
/// live in one database without waiting for each other.
#[cfg(feature = "postgres")]
pub async fn postgres(
    client: &mut tokio_postgres::Client,
    migrations: &[&str],
    lock_key: i64,
) -> Result<(), DbError> {
    let supported = supported(migrations);
    // Each pass applies at most one migration in one transaction; a pass that finds nothing to
    // do ends the loop. A bounded number of passes: one per migration, plus retries of a first
    // creation of `tally_schema` that raced with another schema's runner.
    let mut races = 0;
    loop {
        match postgres_step(client, migrations, lock_key, supported).await {
            Ok(true) => continue,
            Ok(false) => return Ok(()),
            Err(Step::Store(e)) => return Err(e),
            Err(Step::Db(e)) => {
                // Two runners with different lock keys can both create `tally_schema` the
                // first time; one loses with a duplicate error and simply tries again.
                let raced = e.code().is_some_and(|c| {
                    *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                        || *c == tokio_postgres::error::SqlState::DUPLICATE_TABLE
                });
                if raced && races < 3 {
                    races += 1;
                    continue;
                }
                return Err(DbError::Backend {
                    operation: "migration",
                    source: Arc::new(e),
                });
            }
        }
    }
}

#[cfg(feature = "postgres")]
enum Step {
    Store(DbError),
    Db(tokio_postgres::Error),
}

#[cfg(feature = "postgres")]
impl From<tokio_postgres::Error> for Step {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e)
    }
}

/// One migration transaction; `Ok(true)` when it applied one, `Ok(false)` when up to date.
#[cfg(feature = "postgres")]
async fn postgres_step(
    client: &mut tokio_postgres::Client,
    migrations: &[&str],
    lock_key: i64,
    supported: i64,
) -> Result<bool, Step> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tally_schema (
             lock_key BIGINT PRIMARY KEY,
             version  BIGINT NOT NULL
         )",
    )
    .await?;
    let version: i64 = tx
        .query_opt(
            "SELECT version FROM tally_schema WHERE lock_key = $1",
            &[&lock_key],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?
        .unwrap_or(0);
    if version > supported {
        return Err(Step::Store(DbError::TooNew {
            found: version,
            supported,
        }));
    }
    let Some(sql) = usize::try_from(version)
        .ok()
        .and_then(|v| migrations.get(v))
    else {
        tx.commit().await?;
        return Ok(false);
    };
    tx.batch_execute(sql).await?;
    tx.execute(
        "INSERT INTO tally_schema (lock_key, version) VALUES ($1, $2)
         ON CONFLICT (lock_key) DO UPDATE SET version = EXCLUDED.version",
        &[&lock_key, &(version + 1)],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(lock_key, version = version + 1, "database schema migrated");
    Ok(true)
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    const STEPS: &[&str] = &["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (y INTEGER);"];

    #[test]
    fn sqlite_applies_missing_steps_once_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.db");
        let mut conn = rusqlite::Connection::open(&path).expect("open");
        sqlite(&mut conn, &STEPS[..1], &path).expect("first");
        sqlite(&mut conn, STEPS, &path).expect("second step only");
        sqlite(&mut conn, STEPS, &path).expect("nothing to do");
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(v, 2);
        assert!(matches!(
            sqlite(&mut conn, &STEPS[..1], &path),
            Err(DbError::TooNew {
                found: 2,
                supported: 1
            })
        ));
    }
}
