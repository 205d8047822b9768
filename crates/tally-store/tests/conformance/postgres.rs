//! The suite on PostgreSQL (fleet mode), against a real throwaway server; plus what only a
//! shared database can show: several hosts counting as one, an outage, a failover.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_store::Store;
use tally_store::postgres::PgStore;
use tally_test_support::postgres::PgServer;

use crate::suite::{Backend, POOL, request};

pub struct Postgres {
    server: PgServer,
    url: String,
    store: Arc<PgStore>,
}

/// Starts a server off the async workers (the harness blocks on initdb and pg_ctl), keeping the
/// test's name for the harness's SKIP line.
pub(crate) async fn server() -> Option<PgServer> {
    let name = std::thread::current().name().map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let start = || {
            let s = PgServer::start()?;
            s.create_database("tally");
            Some(s)
        };
        match name {
            Some(n) => std::thread::scope(|scope| {
                std::thread::Builder::new()
                    .name(n)
                    .spawn_scoped(scope, start)
                    .expect("thread")
                    .join()
                    .expect("harness")
            }),
            None => start(),
        }
    })
    .await
    .expect("join")
}

/// A host's store that counts on the time in each request: the suite drives time by hand (a
/// host counts on the database's clock, X5; `x5_a_fleet_counts_on_the_database_clock`).
async fn open(url: &str, host: &str) -> PgStore {
    let pool = tally_store::pg::connect(url).await.expect("connect");
    let options = tally_store::StoreOptions {
        time: tally_store::TimeSource::Caller,
        ..Default::default()
    };
    PgStore::open_with(pool, host, options).await.expect("open")
}

async fn backend(_test: &str) -> Option<Postgres> {
    let server = server().await?;
    let url = server.url("tally");
    let store = Arc::new(open(&url, "host-a").await);
    Some(Postgres { server, url, store })
}

impl Backend for Postgres {
    fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store) as Arc<dyn Store>
    }

    async fn reopen(&self) -> Arc<dyn Store> {
        // Another host of the fleet on the same database.
        Arc::new(open(&self.url, "host-b").await)
    }

    async fn with_options(&self, options: tally_store::StoreOptions) -> Arc<dyn Store> {
        let pool = tally_store::pg::connect(&self.url).await.expect("connect");
        let options = tally_store::StoreOptions {
            time: tally_store::TimeSource::Caller,
            ..options
        };
        Arc::new(
            PgStore::open_with(pool, "host-capped", options)
                .await
                .expect("open"),
        )
    }

    async fn fail_writes(&self, on: bool) {
        let sql = if on {
            "CREATE FUNCTION tally_test_fail() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
             CREATE TRIGGER tally_test_fail BEFORE INSERT OR UPDATE ON registry
               FOR EACH ROW EXECUTE FUNCTION tally_test_fail();"
        } else {
            "DROP TRIGGER tally_test_fail ON registry; DROP FUNCTION tally_test_fail();"
        };
        tokio::task::block_in_place(|| self.server.psql("tally", sql));
    }
}

crate::all_conformance_tests!();

// X5: hosts of a fleet count, expire and stamp on the database's clock. A host whose clock runs a
// year ahead neither expires the others' entries nor stamps its own in the future; one a month
// behind does not bring expired machines back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x5_a_fleet_counts_on_the_database_clock() {
    use tally_core::time::{DAY_MS, Timestamp};
    let Some(b) = backend("x5_a_fleet_counts_on_the_database_clock").await else {
        return;
    };
    let on_db_clock = |name: &'static str| {
        let url = b.url.clone();
        async move {
            let pool = tally_store::pg::connect(&url).await.expect("connect");
            PgStore::open(pool, name).await.expect("open")
        }
    };
    let (a, ahead) = (on_db_clock("host-a").await, on_db_clock("host-ahead").await);
    let real = tally_core::time::SystemClock;
    let now = || tally_core::Clock::now(&real).millis();
    let year = 365 * DAY_MS;
    // `request(n, ms, _)` is at a fixed T0; shift each to the time its host's clock shows.
    let at = |n: u128, ms: i64| {
        let mut c = request(n, 0, 5);
        c.restamp(Timestamp(ms));
        c
    };
    for n in 1..=4 {
        assert_eq!(
            a.commit(at(n, now())).await.expect("commit").count,
            n as u32
        );
    }
    let before = now();
    let counted = ahead.commit(at(5, now() + year)).await.expect("commit");
    assert_eq!(counted.count, 5, "the year-ahead host expired nobody");
    assert!(
        (before - 60_000..=now() + 60_000).contains(&counted.at.millis()),
        "stamped on the database clock, not a year ahead"
    );
    let entry = a
        .registry_entry(uuid::Uuid::from_u128(105))
        .await
        .expect("entry")
        .expect("present");
    assert!(entry.last_seen.millis() <= now() + 60_000);
    // A host a month behind counts on the same clock: the others' entries are live for it.
    let behind = on_db_clock("host-behind").await;
    let c = behind
        .commit(at(6, now() - 31 * DAY_MS))
        .await
        .expect("commit");
    assert_eq!(c.count, 6);
    // Counts read on the database clock whatever `now` a caller passes.
    let counts = ahead
        .pool_counts(Timestamp(now() + year))
        .await
        .expect("counts");
    assert_eq!(counts[0].count, 6);
    let evidence = a.clock_evidence().await.expect("evidence");
    let db = evidence.database_now.expect("the database has a clock");
    assert!((db.millis() - now()).abs() < 60_000);
}

// X1: three hosts on one database, 90 clients at once spread over them: the fleet gives every
// count from 1 to the capacity (50) exactly once, as one host would in commit order, and never
// more; the registry and the events say which host served each request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x1_three_hosts_count_as_one() {
    let Some(b) = backend("x1_three_hosts_count_as_one").await else {
        return;
    };
    let hosts = [
        Arc::clone(&b.store),
        Arc::new(open(&b.url, "host-b").await),
        Arc::new(open(&b.url, "host-c").await),
    ];
    let waits: Vec<_> = (0..90)
        .map(|n| {
            let s = Arc::clone(&hosts[n % 3]);
            tokio::spawn(async move { s.commit(request(n as u128, n as i64, 25)).await })
        })
        .collect();
    let mut counts = Vec::new();
    for w in waits {
        counts.push(w.await.expect("join").expect("commit").count);
    }
    counts.sort_unstable();
    let expected: Vec<u32> = (1..=50).chain(std::iter::repeat_n(50, 40)).collect();
    assert_eq!(counts, expected);
    for h in &hosts {
        let pools = h
            .pool_counts(tally_core::time::Timestamp(1_800_000_000_100))
            .await
            .expect("counts");
        assert_eq!(
            (pools[0].pool, pools[0].count, pools[0].capacity),
            (POOL, 50, 50)
        );
        assert_eq!(h.registry_len().await.expect("len"), 90);
    }
    let e = hosts[0]
        .registry_entry(uuid::Uuid::from_u128(101))
        .await
        .expect("entry")
        .expect("present");
    assert_eq!(e.served_by.as_deref(), Some("host-b"));
    let events = hosts[2]
        .events(tally_store::EventQuery {
            event_id: Some(12290),
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("events");
    assert_eq!(events.len(), 90);
    let served_by_c = events.iter().filter(|e| e.data["host"] == "host-c").count();
    assert_eq!(served_by_c, 30);
}

// X3: the database goes away; commits fail quickly (never hang) and count nothing; when it is
// back, the same store resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x3_outage_fails_fast_and_recovers_without_restart() {
    let Some(b) = backend("x3_outage_fails_fast_and_recovers_without_restart").await else {
        return;
    };
    for n in 1..=2 {
        b.store
            .commit(request(n, n as i64, 5))
            .await
            .expect("commit");
    }
    tokio::task::block_in_place(|| b.server.stop_immediate());
    let started = Instant::now();
    let err = b
        .store
        .commit(request(3, 3, 5))
        .await
        .expect_err("database down");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "failed in {:?}",
        started.elapsed()
    );
    assert!(b.store.storage_error().is_some(), "{err}");
    tokio::task::block_in_place(|| b.server.restart());
    // The first commit after the restart may still meet a connection the server closed; the
    // pool drops it, and a later one goes through.
    let deadline = Instant::now() + Duration::from_secs(20);
    let counted = loop {
        match b.store.commit(request(4, 4, 5)).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => poll_pause().await,
            Err(e) => panic!("store did not recover: {e}"),
        }
    };
    assert_eq!(
        counted.count, 3,
        "clients 1, 2 and 4; client 3 was never stored"
    );
    // The outage ends with a commit at least HEALTH_SETTLE after its last failure.
    let mut n = 5;
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.store.storage_error().is_some() {
        assert!(Instant::now() < deadline, "the store stays down");
        poll_pause().await;
        b.store.commit(request(4, n, 5)).await.expect("commit");
        n += 1;
    }
}

// X3: the primary dies and a streaming standby is promoted; a store on the multi-host URL
// continues on the new primary without a restart, with every acknowledged count there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x3_failover_to_a_promoted_standby() {
    let Some(primary) = server().await else {
        return;
    };
    let standby = tokio::task::block_in_place(|| {
        let standby = primary.start_standby();
        // Synchronous replication: an acknowledged commit is on the standby too (the set-up
        // OPERATIONS.md gives for a fleet that must not lose acknowledged activations).
        primary.make_synchronous();
        standby
    });
    let url = PgServer::failover_url(&[&primary, &standby], "tally");
    let store = open(&url, "host-a").await;
    for n in 1..=3 {
        store.commit(request(n, n as i64, 5)).await.expect("commit");
    }
    tokio::task::block_in_place(|| {
        primary.stop_immediate();
        standby.promote();
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let counted = loop {
        match store.commit(request(4, 4, 5)).await {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => poll_pause().await,
            Err(e) => panic!("store did not fail over within 60 s: {e}"),
        }
    };
    assert_eq!(counted.count, 4, "the standby had every acknowledged count");
}

/// Between two polls of a condition (the store recovering): short, bounded by the caller's
/// deadline.
async fn poll_pause() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

// Issue 10: three hosts starting at once on an empty database all come up (the migrations run
// under an advisory lock), and a database written by a newer Tally is refused, untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_migrate_at_once_and_a_newer_schema_is_refused() {
    let Some(server) = server().await else {
        return;
    };
    let url = server.url("tally");
    let opens: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            let url = url.clone();
            tokio::spawn(async move {
                let pool = tally_store::pg::connect(&url).await.expect("connect");
                PgStore::open(pool, name).await.map(|_| ())
            })
        })
        .collect();
    for o in opens {
        o.await.expect("join").expect("every host comes up");
    }
    let reader = {
        let pool = tally_store::pg::connect(&url).await.expect("connect");
        PgStore::open_read_only(pool, "reader").await
    };
    assert!(
        reader.is_ok(),
        "a read-only open of a migrated schema works"
    );
    tokio::task::block_in_place(|| {
        server.psql(
            "tally",
            &format!(
                "UPDATE tally_schema SET version = 99 WHERE lock_key = {}",
                tally_store::postgres::MIGRATION_LOCK
            ),
        )
    });
    let pool = tally_store::pg::connect(&url).await.expect("connect");
    let err = PgStore::open(pool, "new").await.expect_err("newer schema");
    assert!(err.to_string().contains("upgrade Tally"), "{err}");
    let version = tokio::task::block_in_place(|| {
        server.psql(
            "tally",
            &format!(
                "SELECT version FROM tally_schema WHERE lock_key = {}",
                tally_store::postgres::MIGRATION_LOCK
            ),
        )
    });
    assert_eq!(version, "99", "left untouched");
}

// Read commands on a fleet: nothing to read before a host created the schema (and nothing is
// created); writes through a read-only store are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_opens_never_create_or_write() {
    let Some(server) = server().await else {
        return;
    };
    let url = server.url("tally");
    let pool = tally_store::pg::connect(&url).await.expect("connect");
    let err = PgStore::open_read_only(pool.clone(), "reader")
        .await
        .expect_err("no schema yet");
    assert!(
        matches!(err, tally_store::StoreError::Missing { .. }),
        "{err}"
    );
    let tables = tokio::task::block_in_place(|| {
        server.psql(
            "tally",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
        )
    });
    assert_eq!(tables, "0", "a read-only open creates nothing");
    let writer = PgStore::open(pool.clone(), "host-a").await.expect("open");
    writer.commit(request(1, 0, 5)).await.expect("commit");
    let reader = PgStore::open_read_only(pool, "reader")
        .await
        .expect("read-only");
    assert_eq!(reader.registry_len().await.expect("len"), 1);
    let err = reader
        .commit(request(2, 1, 5))
        .await
        .expect_err("read-only");
    assert!(
        matches!(err, tally_store::StoreError::ReadOnly { .. }),
        "{err}"
    );
}

// Issue 21, one outcome per request: a request whose deadline passes while its batch waits for
// a pool lock (held here by another session, as by a stalled host) is answered Timeout and is
// never committed, not even once the lock is free; the store says it is down meanwhile, and
// the lock wait is bounded (lock_timeout), so the writer moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue21_a_request_past_its_deadline_is_never_committed() {
    let Some(b) = backend("issue21_a_request_past_its_deadline_is_never_committed").await else {
        return;
    };
    b.store.commit(request(1, 1, 5)).await.expect("commit");
    let pool = tally_store::pg::connect(&b.url).await.expect("connect");
    let mut holder = pool.get().await.expect("client");
    let tx = holder.transaction().await.expect("begin");
    tx.execute("SELECT 1 FROM pools WHERE pool = $1 FOR UPDATE", &[&POOL])
        .await
        .expect("lock");
    let started = Instant::now();
    let r = b
        .store
        .commit_within(request(2, 2, 5), Duration::from_millis(500))
        .await;
    assert!(
        matches!(r, Err(tally_store::StoreError::Timeout { .. })),
        "{r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        b.store.storage_error().is_some(),
        "a deadline that fires is an outage"
    );
    // The writer's wait ends at lock_timeout with its own error, not hours later.
    tx.rollback().await.expect("release");
    let counted = b
        .store
        .commit_within(request(3, 3, 5), Duration::from_secs(3))
        .await
        .expect("commits again");
    assert_eq!(counted.count, 2, "client 2 was never counted");
    let stored: i64 = holder
        .query_one(
            "SELECT count(*) FROM registry WHERE cmid = $1",
            &[&uuid::Uuid::from_u128(102)],
        )
        .await
        .expect("registry")
        .get(0);
    assert_eq!(stored, 0, "nor registered");
    let events: i64 = holder
        .query_one(
            "SELECT count(*) FROM events WHERE data->>'cmid' = $1",
            &[&uuid::Uuid::from_u128(102).to_string()],
        )
        .await
        .expect("events")
        .get(0);
    assert_eq!(events, 0, "nor in the event log");
}

// Issue 21: the store reads the database's replication; a host told to require synchronous
// replication refuses a database without a synchronous standby, and opens once it has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue21_replication_is_reported_and_can_be_required() {
    use tally_store::replication::ReplicationMode;
    let Some(b) = backend("issue21_replication_is_reported_and_can_be_required").await else {
        return;
    };
    let pool = tally_store::pg::connect(&b.url).await.expect("connect");
    let r = tally_store::postgres::check_replication(&pool)
        .await
        .expect("check");
    assert_eq!(r.mode, ReplicationMode::Standalone, "{r:?}");
    let strict = tally_store::StoreOptions {
        require_sync_replication: true,
        ..Default::default()
    };
    let e = PgStore::open_with(pool.clone(), "strict", strict)
        .await
        .expect_err("no standby: refused");
    assert!(e.to_string().contains("require_sync_replication"), "{e}");
    let standby = tokio::task::block_in_place(|| b.server.start_standby());
    let r = tally_store::postgres::check_replication(&pool)
        .await
        .expect("check");
    assert_eq!(r.mode, ReplicationMode::Asynchronous, "{r:?}");
    assert!(r.warning().is_some_and(|w| w.contains("lost")));
    tokio::task::block_in_place(|| b.server.make_synchronous());
    let r = tally_store::postgres::check_replication(&pool)
        .await
        .expect("check");
    assert_eq!(r.mode, ReplicationMode::Synchronous, "{r:?}");
    PgStore::open_with(pool.clone(), "strict", strict)
        .await
        .expect("synchronous: opens");
    drop(standby);
}

// Issue 21: three hosts share one event table and one cap. Writing at once, they keep it at the
// cap (plus at most one check's worth per host while they write), one host prunes at a time
// (no error, no deadlock), and each host logs event 1011 at most once for the episode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue21_a_fleet_keeps_one_event_cap() {
    use tally_core::time::Timestamp;
    use tally_store::{EVENT_EVENTS_AT_CAP, Event, EventQuery};
    const CAP: u64 = 30;
    let Some(b) = backend("issue21_a_fleet_keeps_one_event_cap").await else {
        return;
    };
    let capped = |name: &'static str| {
        let url = b.url.clone();
        async move {
            let pool = tally_store::pg::connect(&url).await.expect("connect");
            let options = tally_store::StoreOptions {
                event_cap: CAP,
                time: tally_store::TimeSource::Caller,
                ..Default::default()
            };
            Arc::new(PgStore::open_with(pool, name, options).await.expect("open"))
        }
    };
    let hosts = [
        capped("host-a").await,
        capped("host-b").await,
        capped("host-c").await,
    ];
    let event = |n: i64| Event {
        at: Timestamp(1_800_000_000_000 + n),
        event_id: 1000,
        level: "info".into(),
        message: format!("event {n}"),
        data: serde_json::json!({}),
    };
    let writers: Vec<_> = hosts
        .iter()
        .enumerate()
        .map(|(h, s)| {
            let s = Arc::clone(s);
            tokio::spawn(async move {
                for k in 0..40 {
                    s.record_events(vec![event((k * 3 + h) as i64)])
                        .await
                        .expect("every write succeeds while hosts prune");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("join");
    }
    let count = |s: Arc<PgStore>| async move {
        s.events(EventQuery {
            limit: 10_000,
            ..EventQuery::default()
        })
        .await
        .expect("events")
    };
    let after = count(Arc::clone(&hosts[0])).await;
    assert!(
        after.len() as u64 <= CAP + 3,
        "at most one check's worth over the cap per host: {}",
        after.len()
    );
    // The next batch's check brings the shared table to the cap.
    hosts[0]
        .record_events(vec![event(1_000)])
        .await
        .expect("record");
    let deadline = Instant::now() + Duration::from_secs(10);
    let settled = loop {
        let all = count(Arc::clone(&hosts[0])).await;
        if all.len() as u64 <= CAP {
            break all;
        }
        assert!(Instant::now() < deadline, "{} rows", all.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(settled.len() as u64 >= CAP - 3, "{} rows", settled.len());
    let pruned: u64 = hosts.iter().map(|h| h.event_cap().pruned_total).sum();
    assert!(
        pruned >= 121 - CAP,
        "the hosts pruned {pruned} rows together"
    );
    let logged = hosts[0]
        .events(EventQuery {
            event_id: Some(EVENT_EVENTS_AT_CAP),
            limit: 100,
            ..EventQuery::default()
        })
        .await
        .expect("events");
    assert!(logged.len() <= 3, "at most once per host: {}", logged.len());
    assert!(hosts.iter().any(|h| h.event_cap().at_cap));
}
