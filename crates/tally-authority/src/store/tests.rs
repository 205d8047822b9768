//! One conformance suite for every [`AuthorityStore`] backend (rustls-test style): the cases in
//! `cases` are written once and instantiated once per backend by `suite!`. Each backend gives
//! two handles on the same state, as two `tally authority run` processes would have (two
//! connections to one SQLite file; two pools on one PostgreSQL database), and the concurrency
//! cases spread their attempts over both. PostgreSQL runs as a real server
//! (`tally_test_support::postgres`), never a mock.

use std::sync::Arc;

use tally_core::time::Timestamp;

use super::*;

/// Two handles on one store's state, and what keeps that state alive.
pub(super) struct Backend {
    stores: [Arc<dyn AuthorityStore>; 2],
    _keep: Box<dyn std::any::Any + Send>,
}

mod backends {
    use super::*;

    pub(super) async fn sqlite() -> Option<Backend> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("authority.db");
        let a = SqliteAuthorityStore::open(&path).expect("open");
        let b = SqliteAuthorityStore::open(&path).expect("open again");
        Some(Backend {
            stores: [Arc::new(a), Arc::new(b)],
            _keep: Box::new(dir),
        })
    }

    #[cfg(feature = "postgres")]
    pub(super) async fn postgres() -> Option<Backend> {
        let server = pg_server().await?;
        let url = server.url("authority");
        let a = PgAuthorityStore::connect(&url).await.expect("connect");
        let b = PgAuthorityStore::connect(&url)
            .await
            .expect("connect again");
        Some(Backend {
            stores: [Arc::new(a), Arc::new(b)],
            _keep: Box::new(server),
        })
    }
}

/// A fresh PostgreSQL server with an empty database `authority` (`None`: skipped).
#[cfg(feature = "postgres")]
async fn pg_server() -> Option<tally_test_support::postgres::PgServer> {
    let name = std::thread::current().name().map(str::to_owned);
    // The harness blocks (it runs initdb and pg_ctl); keep it off the async workers. It names
    // the test in its SKIP line from the thread name, so hand that over.
    let server = tokio::task::spawn_blocking(move || {
        let start = || {
            let s = tally_test_support::postgres::PgServer::start()?;
            s.create_database("authority");
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
    .expect("join")?;
    Some(server)
}

const NOW: Timestamp = Timestamp(1_800_000_000_000);

fn host_key(serial: u32) -> NewKey {
    NewKey {
        serial,
        kind: "host",
        key: format!("HOST-KEY-{serial}"),
        group: Some("server-c".into()),
        generation: Some(1),
        max_hosts: DEFAULT_MAX_HOSTS,
        max_activations: DEFAULT_MAX_ACTIVATIONS,
        note: "customer 1".into(),
    }
}

fn mak(serial: u32, budget: u32) -> NewKey {
    NewKey {
        serial,
        kind: "mak",
        key: format!("MAK-{serial}"),
        group: None,
        generation: None,
        max_hosts: budget,
        max_activations: 10,
        note: String::new(),
    }
}

fn hw(n: u32) -> String {
    format!("{n:010x}")
}

fn entry(n: u32) -> tally_log::LogEntry {
    tally_log::LogEntry {
        kind: tally_log::EntryKind::Catalog,
        timestamp_ms: NOW.millis() + i64::from(n),
        object: format!("object {n}").into_bytes(),
    }
}

mod cases {
    use super::*;

    // X8: appends from two handles at once (as two processes) get dense, distinct indexes;
    // an activation is logged in its transaction, a refused one logs nothing; entries read
    // back are the ones appended, and an object's entry is found by its hash.
    pub(super) async fn x8_log_appends_are_dense_across_handles(b: &Backend) {
        let [s, other] = &b.stores;
        assert_eq!(s.log_size().await.expect("size"), 0);
        assert!(s.log_leaf_hashes(0).await.expect("leaves").is_empty());
        assert!(s.insert_key(host_key(7), "cli", NOW).await.expect("insert"));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..40u32 {
            let st = Arc::clone(&b.stores[(n % 2) as usize]);
            tasks.spawn(async move {
                if n % 4 == 0 {
                    // Hosts 0..=5 fit the key's limit of 6; the rest are refused.
                    let r = st
                        .activate_logged(7, &hw(n / 4), "pk", NOW, &entry(n))
                        .await
                        .expect("db");
                    (n, r.ok().map(|(_, i)| i))
                } else {
                    (n, Some(st.append_log(&entry(n)).await.expect("append")))
                }
            });
        }
        let mut indexes = Vec::new();
        let mut refused = Vec::new();
        while let Some(r) = tasks.join_next().await {
            match r.expect("task") {
                (n, Some(i)) => indexes.push((i, n)),
                (n, None) => refused.push(n),
            }
        }
        assert_eq!(
            refused.len(),
            4,
            "10 activations, 6 hosts allowed: {refused:?}"
        );
        indexes.sort_unstable();
        let total = indexes.len() as u64;
        assert_eq!(total, 36);
        assert!(
            indexes
                .iter()
                .enumerate()
                .all(|(pos, (i, _))| *i == pos as u64),
            "dense: {indexes:?}"
        );
        assert_eq!(other.log_size().await.expect("size"), total);
        let leaves = other.log_leaf_hashes(total).await.expect("leaves");
        let listed = s.log_entries(0, 1000).await.expect("entries");
        assert_eq!(listed.len() as u64, total);
        for ((i, n), stored) in indexes.iter().zip(&listed) {
            assert_eq!(stored.index, *i);
            assert_eq!(stored.entry, entry(*n));
            assert_eq!(leaves[*i as usize], entry(*n).leaf_hash());
        }
        assert_eq!(s.log_entries(30, 4).await.expect("page").len(), 4);
        assert_eq!(s.log_entries(total, 4).await.expect("page"), vec![]);
        let (i, n) = indexes[5];
        let found = other
            .log_find(&crate::store::log::object_hash(&entry(n).object))
            .await
            .expect("find");
        assert_eq!(found, Some(i));
        assert_eq!(other.log_find(&[0; 32]).await.expect("find"), None);
        // The first `size` leaves only; more than the log holds is damage, not a short list.
        assert_eq!(s.log_leaf_hashes(3).await.expect("leaves").len(), 3);
        assert!(matches!(
            s.log_leaf_hashes(total + 1).await,
            Err(StoreError::LogDamaged { .. })
        ));
    }

    pub(super) async fn keys_round_trip(b: &Backend) {
        let [s, other] = &b.stores;
        assert!(
            s.insert_key(host_key(4_000_000_000), "cli", NOW)
                .await
                .expect("insert")
        );
        assert!(
            !other
                .insert_key(host_key(4_000_000_000), "cli", NOW)
                .await
                .expect("insert"),
            "a taken serial is refused, also through another handle"
        );
        assert!(
            s.insert_key(mak(7, 3), "op", NOW.plus_days(1))
                .await
                .expect("insert")
        );
        let k = other
            .key(4_000_000_000)
            .await
            .expect("key")
            .expect("exists");
        assert_eq!(k.serial, 4_000_000_000, "serials use all 32 bits");
        assert_eq!(k.kind, "host");
        assert_eq!(k.key, "HOST-KEY-4000000000");
        assert_eq!(k.group.as_deref(), Some("server-c"));
        assert_eq!(k.generation, Some(1));
        assert_eq!((k.max_hosts, k.max_activations, k.hosts_used), (6, 10, 0));
        assert_eq!(k.created_at, NOW);
        assert_eq!(k.note, "customer 1");
        assert_eq!((k.revoked_at, k.revoke_reason), (None, None));
        assert_eq!(s.key(1).await.expect("key"), None);
        let keys = other.keys().await.expect("keys");
        let serials: Vec<u32> = keys.iter().map(|k| k.serial).collect();
        assert_eq!(serials, [4_000_000_000, 7], "ordered by issue time");
        assert_eq!(keys[1].group, None);
        let audit = s.audit().await.expect("audit");
        let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(actions, ["issue_mak_key", "issue_host_key"], "newest first");
        assert_eq!(audit[0].actor, "op");
        assert_eq!(audit[1].serial, Some(4_000_000_000));
    }

    // R23: 10 activations per host, 6 hosts; an exception raises both; revocation stops all.
    pub(super) async fn r23_limits_exception_and_revocation(b: &Backend) {
        let [s, other] = &b.stores;
        s.insert_key(host_key(11), "cli", NOW)
            .await
            .expect("insert");
        for i in 1..=10u32 {
            let store = if i % 2 == 0 { s } else { other };
            let u = store
                .activate(11, &hw(1), "pub-a", NOW.plus_days(i64::from(i)))
                .await
                .expect("db")
                .expect("allowed");
            assert_eq!((u.hosts_used, u.activations), (1, i));
        }
        assert_eq!(
            s.activate(11, &hw(1), "pub-a", NOW).await.expect("db"),
            Err(Refusal::TooManyActivations { max: 10 })
        );
        for h in 2..=6 {
            other
                .activate(11, &hw(h), "p", NOW)
                .await
                .expect("db")
                .expect("allowed");
        }
        assert_eq!(
            s.activate(11, &hw(7), "p", NOW).await.expect("db"),
            Err(Refusal::TooManyHosts { max: 6 })
        );
        let k = other
            .grant_exception(11, 1, 2, "hardware swap", "op", NOW)
            .await
            .expect("db")
            .expect("key");
        assert_eq!((k.max_hosts, k.max_activations, k.hosts_used), (7, 12, 6));
        let u = s
            .activate(11, &hw(7), "p", NOW)
            .await
            .expect("db")
            .expect("now allowed");
        assert_eq!(
            (u.hosts_used, u.max_hosts, u.activations, u.max_activations),
            (7, 7, 1, 12)
        );
        s.activate(11, &hw(1), "pub-b", NOW)
            .await
            .expect("db")
            .expect("11th allowed");
        let acts = other.activations(11).await.expect("activations");
        assert_eq!(acts.len(), 7);
        let first = acts.iter().find(|a| a.hardware == hw(1)).expect("host 1");
        assert_eq!((first.count, first.detail.as_str()), (11, "pub-b"));
        assert_eq!(first.first_at, NOW.plus_days(1));
        assert_eq!(first.last_at, NOW);
        let k = s
            .revoke(
                11,
                "fraud",
                tally_proto::revocation::Reason::Withdrawn,
                "op",
                NOW,
            )
            .await
            .expect("db")
            .expect("key");
        assert_eq!(
            (k.revoked_at, k.revoke_reason.as_deref()),
            (Some(NOW), Some("fraud"))
        );
        // Seen through the other handle at once (another process, on PostgreSQL).
        assert_eq!(
            other.activate(11, &hw(2), "p", NOW).await.expect("db"),
            Err(Refusal::Revoked {
                reason: "fraud".into()
            })
        );
        let audit = other.audit().await.expect("audit");
        let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(actions, ["revoke", "exception", "issue_host_key"]);
        assert_eq!(
            audit[1].detail,
            "+1 hosts, +2 activations per host: hardware swap"
        );
    }

    // X7: a reactivation supersedes the machine's earlier certificates (they go on the list as
    // `superseded`), revoking a key puts it on the list, and concurrent changes from two
    // processes give dense ids, each once: a list of serial N holds every row up to N.
    pub(super) async fn x7_supersession_and_the_revocation_list(b: &Backend) {
        use tally_proto::revocation::{Reason, Subject};
        let [s, other] = &b.stores;
        assert!(s.insert_key(host_key(21), "op", NOW).await.expect("db"));
        assert!(s.insert_key(mak(22, 5), "op", NOW).await.expect("db"));
        let cert = |n: u8, machine: u32| NewCertificate {
            fingerprint: [n; 32],
            serial: 21,
            hardware: hw(machine),
            host_key: format!("{n:02x}"),
        };
        assert!(
            s.record_certificate(cert(1, 1), NOW)
                .await
                .expect("db")
                .is_empty()
        );
        assert!(
            other
                .record_certificate(cert(2, 2), NOW)
                .await
                .expect("db")
                .is_empty()
        );
        // The same certificate again (an offline confirmation typed twice) supersedes nothing.
        assert!(
            s.record_certificate(cert(1, 1), NOW)
                .await
                .expect("db")
                .is_empty()
        );
        // Machine 1 reactivates: its first certificate is superseded, machine 2's is not.
        assert_eq!(
            other.record_certificate(cert(3, 1), NOW).await.expect("db"),
            vec![[1; 32]]
        );
        assert_eq!(
            s.record_certificate(cert(4, 1), NOW).await.expect("db"),
            vec![[3; 32]]
        );
        s.revoke(22, "refund", Reason::Withdrawn, "op", NOW)
            .await
            .expect("db")
            .expect("mak");
        assert!(
            other
                .revoke_certificate([9; 32], Reason::KeyCompromise, "leaked backup", "op", NOW)
                .await
                .expect("db")
        );
        assert!(
            !s.revoke_certificate([9; 32], Reason::KeyCompromise, "again", "op", NOW)
                .await
                .expect("db")
        );
        let rows = other.revocations().await.expect("db");
        let ids: Vec<u32> = rows.iter().map(|r| r.id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        let subjects: Vec<(Subject, Reason)> = rows
            .iter()
            .map(|r| (r.entry.subject, r.entry.reason))
            .collect();
        assert_eq!(
            subjects,
            [
                (Subject::Certificate([1; 32]), Reason::Superseded),
                (Subject::Certificate([3; 32]), Reason::Superseded),
                (Subject::Mak(22), Reason::Withdrawn),
                (Subject::Certificate([9; 32]), Reason::KeyCompromise),
            ]
        );
        // Twenty revocations at once over both handles: ids stay dense and unique.
        let mut tasks = Vec::new();
        for i in 0..20u8 {
            let store = Arc::clone(&b.stores[usize::from(i % 2)]);
            tasks.push(tokio::spawn(async move {
                store
                    .revoke_certificate([100 + i; 32], Reason::Unspecified, "bulk", "op", NOW)
                    .await
            }));
        }
        for t in tasks {
            assert!(t.await.expect("join").expect("db"));
        }
        let ids: Vec<u32> = s
            .revocations()
            .await
            .expect("db")
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, (1..=24).collect::<Vec<u32>>());
    }

    pub(super) async fn unknown_keys(b: &Backend) {
        let [s, _] = &b.stores;
        assert_eq!(
            s.activate(99, &hw(1), "p", NOW).await.expect("db"),
            Err(Refusal::UnknownKey)
        );
        assert_eq!(
            s.revoke(
                99,
                "x",
                tally_proto::revocation::Reason::Unspecified,
                "op",
                NOW
            )
            .await
            .expect("db"),
            None
        );
        assert_eq!(
            s.grant_exception(99, 1, 1, "x", "op", NOW)
                .await
                .expect("db"),
            None
        );
        assert!(s.activations(99).await.expect("db").is_empty());
        assert!(s.audit().await.expect("db").is_empty(), "nothing happened");
    }

    // R23, X2: 30 hosts at once, over two handles: exactly 6 are certified.
    pub(super) async fn r23_thirty_hosts_at_once_exactly_six(b: &Backend) {
        b.stores[0]
            .insert_key(host_key(21), "cli", NOW)
            .await
            .expect("insert");
        let mut tasks = Vec::new();
        for h in 0..30u32 {
            let store = Arc::clone(&b.stores[h as usize % 2]);
            tasks.push(tokio::spawn(async move {
                store.activate(21, &hw(h), "p", NOW).await
            }));
        }
        let (mut ok, mut refused) = (0, 0);
        for t in tasks {
            match t.await.expect("join").expect("db") {
                Ok(_) => ok += 1,
                Err(Refusal::TooManyHosts { max: 6 }) => refused += 1,
                Err(other) => panic!("unexpected refusal {other:?}"),
            }
        }
        assert_eq!((ok, refused), (6, 24));
        let k = b.stores[1].key(21).await.expect("db").expect("key");
        assert_eq!(k.hosts_used, 6);
        assert_eq!(b.stores[0].activations(21).await.expect("db").len(), 6);
    }

    // R23: one host reactivating 15 times at once: exactly 10 activations count.
    pub(super) async fn r23_one_host_fifteen_times_at_once_exactly_ten(b: &Backend) {
        b.stores[0]
            .insert_key(host_key(22), "cli", NOW)
            .await
            .expect("insert");
        let mut tasks = Vec::new();
        for i in 0..15usize {
            let store = Arc::clone(&b.stores[i % 2]);
            tasks.push(tokio::spawn(async move {
                store.activate(22, &hw(5), "p", NOW).await
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.expect("join").expect("db") {
                Ok(_) => ok += 1,
                Err(refusal) => assert_eq!(refusal, Refusal::TooManyActivations { max: 10 }),
            }
        }
        assert_eq!(ok, 10);
        let acts = b.stores[1].activations(22).await.expect("db");
        assert_eq!((acts.len(), acts[0].count), (1, 10));
    }

    // R25, X2: a MAK with a budget of 3, 20 machines at once: exactly 3; a machine that got in
    // reactivates without using the budget.
    pub(super) async fn r25_mak_budget_three_of_twenty(b: &Backend) {
        b.stores[1]
            .insert_key(mak(31, 3), "cli", NOW)
            .await
            .expect("insert");
        let mut tasks = Vec::new();
        for h in 0..20u32 {
            let store = Arc::clone(&b.stores[h as usize % 2]);
            tasks.push(tokio::spawn(async move {
                (h, store.activate(31, &hw(h), "cmid", NOW).await)
            }));
        }
        let mut admitted = Vec::new();
        for t in tasks {
            let (h, r) = t.await.expect("join");
            match r.expect("db") {
                Ok(_) => admitted.push(h),
                Err(refusal) => assert_eq!(refusal, Refusal::TooManyHosts { max: 3 }),
            }
        }
        assert_eq!(admitted.len(), 3);
        let u = b.stores[0]
            .activate(31, &hw(admitted[0]), "cmid", NOW)
            .await
            .expect("db")
            .expect("the same machine again is not a new one");
        assert_eq!((u.hosts_used, u.activations), (3, 2));
    }
}

macro_rules! suite {
    ($backend:ident) => {
        suite!($backend:
            keys_round_trip,
            r23_limits_exception_and_revocation,
            unknown_keys,
            x7_supersession_and_the_revocation_list,
            r23_thirty_hosts_at_once_exactly_six,
            r23_one_host_fifteen_times_at_once_exactly_ten,
            r25_mak_budget_three_of_twenty,
            x8_log_appends_are_dense_across_handles,
        );
    };
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(b) = super::backends::$backend().await {
                        super::cases::$case(&b).await;
                    }
                }
            )*
        }
    };
}

suite!(sqlite);
#[cfg(feature = "postgres")]
suite!(postgres);

/// What only the PostgreSQL backend has: several processes migrating at once, a newer schema
/// refused, a promoted standby found after failover.
#[cfg(feature = "postgres")]
mod postgres_only {
    use tally_test_support::postgres::PgServer;

    use crate::store::postgres::{SCHEMA_LOCK_KEY, SCHEMA_VERSION};

    use super::*;

    // Three processes starting at once on an empty database all come up (advisory lock).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_stores_migrate_an_empty_database_at_once() {
        let Some(server) = pg_server().await else {
            return;
        };
        let url = server.url("authority");
        let (a, b, c) = tokio::join!(
            PgAuthorityStore::connect(&url),
            PgAuthorityStore::connect(&url),
            PgAuthorityStore::connect(&url)
        );
        let (a, b, c) = (a.expect("a"), b.expect("b"), c.expect("c"));
        assert!(a.insert_key(host_key(1), "cli", NOW).await.expect("insert"));
        assert!(b.key(1).await.expect("db").is_some());
        assert!(c.keys().await.expect("db").len() == 1);
        let version = server.psql(
            "authority",
            &format!("SELECT version FROM tally_schema WHERE lock_key = {SCHEMA_LOCK_KEY}"),
        );
        assert_eq!(version, SCHEMA_VERSION.to_string());
    }

    // A database written by a newer Tally is refused with a clear error, and left alone.
    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let Some(server) = pg_server().await else {
            return;
        };
        let url = server.url("authority");
        drop(PgAuthorityStore::connect(&url).await.expect("create"));
        server.psql(
            "authority",
            &format!("UPDATE tally_schema SET version = 7 WHERE lock_key = {SCHEMA_LOCK_KEY}"),
        );
        let e = PgAuthorityStore::connect(&url).await.expect_err("too new");
        assert!(
            matches!(
                e,
                StoreError::Database(tally_db::DbError::TooNew {
                    found: 7,
                    supported
                }) if supported as usize == SCHEMA_VERSION
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("upgrade Tally"), "{e}");
    }

    // X3 for the authority: after the primary dies and the standby is promoted, the same store
    // (URL with both servers, target_session_attrs=read-write) carries on on the new primary.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_promoted_standby_is_found_after_failover() {
        let Some(primary) = pg_server().await else {
            return;
        };
        let primary = Arc::new(primary);
        let p = Arc::clone(&primary);
        let standby = tokio::task::spawn_blocking(move || p.start_standby())
            .await
            .expect("standby");
        let url = PgServer::failover_url(&[&primary, &standby], "authority");
        let store = PgAuthorityStore::connect(&url).await.expect("connect");
        store
            .insert_key(host_key(41), "cli", NOW)
            .await
            .expect("insert");
        store
            .activate(41, &hw(1), "p", NOW)
            .await
            .expect("db")
            .expect("ok");
        // Wait until the standby replayed the activation, then lose the primary.
        let replayed = tally_test_support::wait_until(std::time::Duration::from_secs(20), || {
            let n = standby.try_psql("authority", "SELECT count(*) FROM authority_activations");
            (n.as_deref() == Some("1")).then_some(())
        });
        assert!(replayed.is_some(), "standby did not replay");
        primary.stop_immediate();
        standby.promote();
        // The pool drops the broken connections and finds the promoted server.
        let u = store
            .activate(41, &hw(2), "p", NOW)
            .await
            .expect("served by the promoted standby")
            .expect("allowed");
        assert_eq!(
            u.hosts_used, 2,
            "the state from before the failover is there"
        );
    }
}
