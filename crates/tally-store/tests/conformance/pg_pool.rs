//! Issue 21 part 3 (X3: a storage failure is said, once, and its end too): a fleet store's reads
//! (dashboard, status, registry, events) that cannot get a connection because the pool is
//! exhausted reach the store's health like a failed commit does, naming the pool; and the
//! outage ends once connections are free again and reads work.

use std::time::{Duration, Instant};

use tally_store::postgres::PgStore;
use tally_store::{HEALTH_SETTLE, Store, pg};
use tally_test_support::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x3_an_exhausted_pool_on_reads_is_an_outage_that_ends_when_connections_free() {
    let Some(server) = crate::postgres::server().await else {
        return;
    };
    let url = server.url("tally");
    // A tiny pool (the host's has pg::POOL_SIZE), so holding all of it is cheap.
    let pool = pg::connect_sized(&url, 2).await.expect("connect");
    let store = PgStore::open(pool.clone(), "host-a").await.expect("open");
    store
        .registry_len()
        .await
        .expect("a read with free connections");
    assert_eq!(store.storage_error(), None);

    // Every connection held: as by slow queries, or commits waiting on a lock that a stalled
    // host holds.
    let held = [
        pool.get().await.expect("hold"),
        pool.get().await.expect("hold"),
    ];
    let started = Instant::now();
    let err = store
        .registry_len()
        .await
        .expect_err("no connection is free");
    assert!(
        started.elapsed() < pg::POOL_TIMEOUT + Duration::from_secs(2),
        "the read waited {:?}, beyond the pool's wait",
        started.elapsed()
    );
    let said = err.to_string();
    assert!(
        said.contains("connection pool") && said.contains("exhausted"),
        "{said}"
    );
    let health = store
        .storage_error()
        .expect("a read that found the pool exhausted is an outage (tally_storage_up 0)");
    assert!(
        health.contains("connection pool") && health.contains("all 2 connections"),
        "{health}"
    );

    // Connections free again: reads work at once, and the outage ends once it has settled
    // (HEALTH_SETTLE after its last failure), without a commit.
    drop(held);
    let runtime = tokio::runtime::Handle::current();
    let ended = tokio::task::block_in_place(|| {
        wait_until(HEALTH_SETTLE + Duration::from_secs(10), || {
            runtime
                .block_on(store.registry_len())
                .expect("a read with a free connection");
            store.storage_error().is_none().then_some(())
        })
    });
    assert!(
        ended.is_some(),
        "the store stays down although reads work again: {:?}",
        store.storage_error()
    );
}
