//! The host's clock check (X5): gathers what contradicts the host's clock, says so (event 1007,
//! a warning, `/metrics`, status), and, on a clock nothing contradicts, moves the store's trusted
//! mark forward and pulls stamps from the future back to now.
//!
//! Two clocks are judged. The *host's* clock (status, events, the signed time on a single host)
//! against the database's clock in a fleet, its clients' reported times, the trusted mark (or the
//! newest stored time before there is one) and the monotonic clock. The *count's* clock (what
//! retention and expiry run on) is the host's on a single host and the database's in a fleet,
//! judged against the mark. The decisions are `tally_core::clock::assess`'s.

use std::sync::Arc;
use std::time::Instant;

use tally_core::clock::{Evidence, Finding, assess};
use tally_core::time::Timestamp;
use tally_server::{ClockStatus, HostService};
use tally_store::StoreError;
use tracing::{info, warn};

use crate::events;

/// What one check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// The time the count runs on: the host's clock, or the database's in a fleet.
    pub count_now: Timestamp,
    /// What contradicts the count's clock; retention deletes only when this is empty.
    pub count_findings: Vec<Finding>,
    /// What contradicts the host's clock.
    pub host_findings: Vec<Finding>,
}

/// The clock check's memory between runs (one per running host).
#[derive(Debug, Default)]
pub struct ClockCheck {
    /// The host's clock and the monotonic clock at the previous check.
    last: Option<(Instant, Timestamp)>,
    /// Whether the last check found the host's clock suspect (event 1007 once per episode).
    suspect: bool,
}

impl ClockCheck {
    /// Runs one check: reads the store's evidence, judges both clocks, publishes the result on
    /// the service's [`tally_server::ClockWatch`], records event 1007 when the host's clock turns
    /// suspect, and trusts the count's clock in the store when nothing contradicts it.
    pub async fn run(&mut self, service: &Arc<HostService>) -> Result<Checked, StoreError> {
        let store = service.store();
        let evidence = store.clock_evidence().await?;
        let now = service.clock().now();
        let drift = self.last.map(|(then, wall)| {
            let mono = i64::try_from(then.elapsed().as_millis()).unwrap_or(i64::MAX);
            now.0.saturating_sub(wall.0).saturating_sub(mono)
        });
        self.last = Some((Instant::now(), now));
        let host = Evidence {
            now,
            trusted_mark: evidence.trusted_mark,
            newest_stored: evidence.newest_stored,
            database_now: evidence.database_now,
            clients_offset_ms: service.clock_watch().clients_offset(),
            drift_ms: drift,
        };
        let host_findings = assess(&host);
        let (count_now, count_findings) = match evidence.database_now {
            // A fleet counts on the database's clock: judged against the mark alone.
            Some(db) => {
                let count = Evidence {
                    now: db,
                    trusted_mark: evidence.trusted_mark,
                    newest_stored: evidence.newest_stored,
                    ..Evidence::default()
                };
                (db, assess(&count))
            }
            None => (now, host_findings.clone()),
        };
        let previous = service.clock_watch().status();
        service.clock_watch().set(ClockStatus {
            findings: host_findings.clone(),
            checked_at: Some(now),
            retention_held_back: previous.retention_held_back,
        });
        if !host_findings.is_empty() && !self.suspect {
            for f in &host_findings {
                warn!(
                    reference = f.reference.name(),
                    skew_seconds = f.skew_ms / 1000,
                    "host clock disagrees with its reference (event 1007)"
                );
            }
            events::record(
                store,
                events::CLOCK_SUSPECT,
                "warning",
                "the host's clock disagrees with what it is checked against: retention waits and stamps from the future are not trusted until it agrees again",
                findings_json(&host_findings, now),
            )
            .await;
        } else if host_findings.is_empty() && self.suspect {
            info!("host clock agrees with its references again");
        }
        self.suspect = !host_findings.is_empty();
        if count_findings.is_empty() {
            let pulled = store.trust_clock(count_now).await?;
            if pulled > 0 {
                info!(
                    rows = pulled,
                    now = %count_now,
                    "times stamped in the future pulled back to now (X5)"
                );
            }
        }
        Ok(Checked {
            count_now,
            count_findings,
            host_findings,
        })
    }
}

/// The findings as event data: each reference with the clock's skew from it, in seconds.
pub fn findings_json(findings: &[Finding], now: Timestamp) -> serde_json::Value {
    serde_json::json!({
        "clock": now.to_rfc3339(),
        "tolerance_secs": tally_core::clock::CLOCK_TOLERANCE_MS / 1000,
        "findings": findings
            .iter()
            .map(|f| serde_json::json!({
                "reference": f.reference.name(),
                "skew_seconds": f.skew_ms / 1000,
            }))
            .collect::<Vec<_>>(),
    })
}
