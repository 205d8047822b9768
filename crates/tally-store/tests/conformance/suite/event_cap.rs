//! Issue 21 "bounded everywhere": the event log has a cap besides retention, enforced by each
//! backend's writer; reaching it logs event 1011 once per episode and shows in
//! `Store::event_cap` (the `tally_events_at_cap` and `tally_events_pruned_total` metrics).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_core::time::Timestamp;
use tally_store::{EVENT_EVENTS_AT_CAP, Event, EventQuery, Store, StoreOptions};

use super::{Backend, request};

const T0: i64 = 1_800_000_000_000;
const CAP: u64 = 20;

fn own(n: i64) -> Event {
    Event {
        at: Timestamp(T0 + n),
        event_id: 1000,
        level: "info".into(),
        message: format!("own event {n}"),
        data: serde_json::json!({ "n": n }),
    }
}

async fn all(store: &dyn Store) -> Vec<Event> {
    store
        .events(EventQuery {
            limit: 10_000,
            ..EventQuery::default()
        })
        .await
        .expect("events")
}

/// Waits (bounded) until the writer's step after the last batch has run: the log is at most
/// the cap and `at_cap` is `want`.
async fn settled(store: &dyn Store, want: bool) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = all(store).await;
        if events.len() as u64 <= CAP && store.event_cap().at_cap == want {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "the event log did not settle: {} rows, at_cap {:?}",
            events.len(),
            store.event_cap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 25 rows: activations (12290) and the host's own events, alternating, one batch each.
async fn write_25(store: &Arc<dyn Store>, from: i64) {
    for k in 0..25 {
        let n = from + k;
        if k % 2 == 0 {
            store
                .commit(request(n as u128, n, 5))
                .await
                .expect("commit");
        } else {
            store.record_events(vec![own(n)]).await.expect("record");
        }
    }
}

fn at_cap_events(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| e.event_id == EVENT_EVENTS_AT_CAP)
        .count()
}

pub async fn the_event_log_is_capped_besides_retention(b: &impl Backend) {
    let store = b
        .with_options(StoreOptions {
            event_cap: CAP,
            ..Default::default()
        })
        .await;
    assert_eq!(store.event_cap().cap, CAP);
    write_25(&store, 0).await;
    let kept = settled(&*store, true).await;
    assert!(
        kept.len() as u64 >= CAP - 2,
        "the cap keeps (about) its number of rows: {}",
        kept.len()
    );
    assert_eq!(at_cap_events(&kept), 1, "event 1011 once per episode");
    // The newest survive, the oldest went.
    let newest = own(23).message;
    assert!(kept.iter().any(|e| e.message == newest));
    assert!(
        !kept
            .iter()
            .any(|e| e.event_id == 12290 && e.data["machine"] == "pc-0"),
        "the oldest event was deleted"
    );
    let status = store.event_cap();
    assert!(status.pruned_total >= 25 + 1 - CAP, "{status:?}");
    // Retention empties the log: the episode ends at the next batch's check.
    store
        .prune_events(Timestamp(T0 + 1_000_000))
        .await
        .expect("retention");
    store.record_events(vec![own(100)]).await.expect("record");
    let after = settled(&*store, false).await;
    assert!(after.len() <= 2, "{after:?}");
    // A second episode is logged again.
    write_25(&store, 200).await;
    let kept = settled(&*store, true).await;
    assert_eq!(at_cap_events(&kept), 1, "a new episode, a new event 1011");
}
