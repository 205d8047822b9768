//! The suite on the embedded SQLite backend.

use std::path::PathBuf;
use std::sync::Arc;

use tally_store::Store;
use tally_store::sqlite::{Durability, SqliteStore};

use crate::suite::Backend;

pub struct Sqlite {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: Arc<SqliteStore>,
}

async fn backend(_test: &str) -> Option<Sqlite> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tally.db");
    let store = Arc::new(SqliteStore::open(&path, Durability::Normal).expect("open"));
    Some(Sqlite {
        _dir: dir,
        path,
        store,
    })
}

impl Backend for Sqlite {
    fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store) as Arc<dyn Store>
    }

    async fn reopen(&self) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(&self.path, Durability::Normal).expect("reopen"))
    }

    async fn with_options(&self, options: tally_store::StoreOptions) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open_with(&self.path, Durability::Normal, options).expect("open"))
    }

    async fn fail_writes(&self, on: bool) {
        // A real failure of the real database: a trigger that aborts every registry write, put
        // in (and taken out) through a second connection, as a full disk would fail them.
        let conn = rusqlite::Connection::open(&self.path).expect("side connection");
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .expect("busy timeout");
        let sql = if on {
            "CREATE TRIGGER tally_test_fail BEFORE INSERT ON registry
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;
             CREATE TRIGGER tally_test_fail_update BEFORE UPDATE ON registry
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
        } else {
            "DROP TRIGGER tally_test_fail; DROP TRIGGER tally_test_fail_update;"
        };
        conn.execute_batch(sql).expect("trigger");
    }
}

crate::all_conformance_tests!();
