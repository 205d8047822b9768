//! The behaviour every backend shares is in the conformance suite (tests/conformance); here
//! only what is SQLite's own.

use tally_core::host::{CountRequest, RegistryUpdate};
use tally_proto::{LicenseState, ResultCode};

use super::*;

/// The query plans at scale: each page and period read is an index search or scan, with
/// no sort, except a search with few matches in another order than by name.
#[test]
fn registry_reads_use_their_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tally.db");
    drop(SqliteStore::open(&path, Durability::Normal).expect("open"));
    let conn = Connection::open(&path).expect("conn");
    let plan = |sql: &str| -> String {
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        let rows: Vec<String> = stmt
            .query_map(
                rusqlite::params_from_iter(std::iter::repeat_n(
                    rusqlite::types::Null,
                    stmt.parameter_count(),
                )),
                |r| r.get::<_, String>(3),
            )
            .expect("plan")
            .map(|r| r.expect("row"))
            .collect();
        rows.join("; ")
    };
    let period = plan(&period_sql());
    assert!(
        period.contains("SEARCH registry USING INDEX") && period.contains("cmid>?"),
        "{period}"
    );
    for sort in [
        RegistrySort::LastSeen,
        RegistrySort::Machine,
        RegistrySort::FirstSeen,
    ] {
        for search in [Search::None, Search::Filtered] {
            let p = plan(&page_sql(sort, search));
            assert!(
                !p.contains("TEMP B-TREE") && p.contains("USING"),
                "{sort:?} {search:?}: {p}"
            );
        }
    }
    let p = plan(&page_sql(RegistrySort::Machine, Search::Indexed));
    assert!(
        p.contains("registry_name") && !p.contains("TEMP B-TREE"),
        "{p}"
    );
    let p = plan(&page_sql(RegistrySort::LastSeen, Search::Indexed));
    assert!(
        p.contains("registry_name"),
        "a few matches come from the name index: {p}"
    );
}

fn changes(n: u128, now: i64) -> Changes {
    let cmid = Uuid::from_u128(100 + n);
    Changes {
        counting: Some(CountRequest {
            pool: Uuid::from_u128(1),
            cmid,
            threshold: 5,
            at: Timestamp(now),
        }),
        registry: RegistryUpdate {
            cmid,
            machine_name: format!("pc-{n}"),
            sku: Uuid::from_u128(9),
            pool: Uuid::from_u128(1),
            license_state: LicenseState::InitialGrace,
            seen_at: Timestamp(now),
            result: ResultCode::SUCCESS,
            count: 0,
            activated: false,
            peer: None,
            installation: None,
        },
        clone_policy: Default::default(),
    }
}

// One writer: a read-only store reads what the writer committed, never writes or migrates.
#[tokio::test]
async fn read_only_store_reads_but_never_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tally.db");
    let missing = SqliteStore::open_read_only(&path).expect_err("no file yet");
    assert!(matches!(missing, StoreError::Missing { .. }), "{missing}");
    assert!(
        !path.exists(),
        "a read-only open must not create the database"
    );
    let writer = SqliteStore::open(&path, Durability::Normal).expect("open");
    assert_eq!(
        writer.commit(changes(1, 10)).await.expect("commit").count,
        1
    );
    let reader = SqliteStore::open_read_only(&path).expect("read-only");
    assert_eq!(reader.registry_len().await.expect("len"), 1);
    let err = reader.commit(changes(2, 11)).await.expect_err("read-only");
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err}");
    let err = reader
        .prune_events(Timestamp(i64::MAX))
        .await
        .expect_err("read-only");
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err}");
    // Retention goes through the writer.
    assert_eq!(
        writer
            .prune_events(Timestamp(i64::MAX))
            .await
            .expect("prune"),
        1
    );
}

#[test]
fn an_older_schema_is_not_migrated_by_a_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tally.db");
    Connection::open(&path)
        .and_then(|c| c.execute_batch("PRAGMA user_version = 1"))
        .expect("setup");
    let err = SqliteStore::open_read_only(&path).expect_err("needs upgrade");
    assert!(
        matches!(err, StoreError::NeedsUpgrade { found: 1, .. }),
        "{err}"
    );
}

#[test]
fn a_newer_schema_is_refused_with_advice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tally.db");
    Connection::open(&path)
        .and_then(|c| c.execute_batch("PRAGMA user_version = 99"))
        .expect("setup");
    let err = SqliteStore::open(&path, Durability::Full).expect_err("too new");
    assert!(err.to_string().contains("upgrade Tally"), "{err}");
}
