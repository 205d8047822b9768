//! One storage conformance suite, run against every backend (rustls-test style: the same test
//! bodies, instantiated once per backend). The backends are real databases: a SQLite file in a
//! temp dir, and a throwaway PostgreSQL server started by the test harness.

// Test code: a failed expectation is a test failure, which is what `expect` reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "postgres")]
mod pg_pool;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;
mod suite;

/// Instantiates every suite test for a backend module that provides `async fn backend() ->
/// Option<impl suite::Backend>` (None: the backend's tool is missing and the test skips).
#[macro_export]
macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(b) = backend(stringify!($name)).await else { return };
                $crate::suite::$name(&b).await;
            }
        )*
    };
}

/// Every test of the suite.
#[macro_export]
macro_rules! all_conformance_tests {
    () => {
        $crate::conformance_tests!(
            r2_r5_concurrent_commits_count_in_commit_order,
            r4_renewals_do_not_double_count_and_entries_lapse,
            r5_capacity_follows_the_highest_threshold_and_never_shrinks,
            r6_registry_pages_search_and_entries,
            r6_search_is_a_name_prefix_in_any_case,
            r6_a_period_is_read_in_keyset_pages,
            r6_the_census_counts_each_machine_in_one_state,
            the_bench_pool_is_counted_but_never_listed_or_reported,
            refusals_are_aggregated_not_registered,
            registry_cap_and_retention,
            r27_events_are_recorded_queried_and_pruned,
            x3_a_failed_commit_counts_nothing,
            durable_across_reopen,
            x5_trusting_the_clock_pulls_future_stamps_back,
            x6_a_repeated_sequence_is_a_clone,
            the_event_log_is_capped_besides_retention,
        );
    };
}
