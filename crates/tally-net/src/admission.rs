//! Connection admission: a registry of live connections with a global cap, a per-source cap and
//! eviction of the connection that has made no progress for the longest time.
//!
//! Why eviction instead of a semaphore taken before `accept`: with a semaphore, whoever holds the
//! slots decides who is served next, and a peer that opens `max_connections` connections and
//! trickles one byte now and then (slowloris) or just reopens idle ones keeps every legitimate
//! client in the listen backlog. Here `accept` never waits. A source that already holds
//! [`AdmissionLimits::max_per_source`] connections makes room among its own: its idlest
//! connection is evicted (a new connection is refused only when all of the source's are busy),
//! so one address can never hold more, yet a client that reconnects before the host saw its
//! last connection close is not refused. Otherwise, when the listener is full, the registry
//! cancels, from the source holding the most connections, the connection that has been idle, or
//! in the
//! middle of a request, for the longest time ([`Phase::Idle`], [`Phase::Receiving`]). A
//! connection whose request is being handled ([`Phase::Busy`]) is never evicted: it finishes in
//! bounded time (commit deadline, write timeout). A new client is therefore the *last* candidate
//! for eviction, and is served as long as it sends its request before the attackers have
//! opened `max_connections` newer connections.
//!
//! Hostile input must not flood the log either: evictions and refusals are logged once, then as
//! a count at most every [`LOG_EVERY`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::warn;

/// How often a rate-limited warning is repeated (with the number of events since the last one).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Caps applied by an [`Admission`] registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections open at once on the listener; at the cap, the idlest one is evicted.
    pub max_connections: usize,
    /// Connections open at once from one source IP address (loopback included); over it, the
    /// source's own idlest connection is evicted, or the new one closed if all are busy.
    pub max_per_source: usize,
}

/// What a connection is doing, for choosing whom to evict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Waiting for a request (or a TLS handshake) to start. Evictable.
    Idle,
    /// Part of a request arrived, the rest has not. Evictable.
    Receiving,
    /// A whole request arrived and is being handled or answered. Never evicted.
    Busy,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// The source already holds its share of connections, all busy with requests.
    #[error("too many busy connections from this source")]
    SourceLimit,
    /// Every connection is busy with a request: nothing can be evicted.
    #[error("every connection is busy")]
    Full,
}

/// The registry of a listener's live connections. Cheap to share (`Arc`).
pub struct Admission {
    name: &'static str,
    limits: AdmissionLimits,
    inner: Mutex<Inner>,
    evictions: RateLimitedWarn,
    refusals: RateLimitedWarn,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("name", &self.name)
            .field("limits", &self.limits)
            .field("open", &self.len())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    per_source: HashMap<IpAddr, usize>,
    evicted_total: u64,
}

struct Entry {
    source: IpAddr,
    phase: Phase,
    since: Instant,
    cancel: CancellationToken,
}

impl Inner {
    fn release(&mut self, source: IpAddr) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// The connection to evict: evictable, from the source holding the most connections (a
    /// flooding address pays before a machine with one connection), and among those the one
    /// with the oldest progress. With `source`, only that source's connections are candidates.
    fn victim(&self, source: Option<IpAddr>) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, e)| e.phase != Phase::Busy && source.is_none_or(|s| e.source == s))
            .max_by_key(|(id, e)| {
                let held = self.per_source.get(&e.source).copied().unwrap_or(0);
                (held, std::cmp::Reverse(e.since), std::cmp::Reverse(**id))
            })
            .map(|(id, _)| *id)
    }
}

impl Admission {
    /// A registry for the listener called `name` (used in logs and the metric labels).
    pub fn new(name: &'static str, limits: AdmissionLimits) -> Arc<Self> {
        Arc::new(Self {
            name,
            limits: AdmissionLimits {
                max_connections: limits.max_connections.max(1),
                max_per_source: limits.max_per_source.max(1),
            },
            inner: Mutex::new(Inner::default()),
            evictions: RateLimitedWarn::new(),
            refusals: RateLimitedWarn::new(),
        })
    }

    /// The caps in force.
    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// Admits a new connection from `source`, evicting the idlest connection when the listener
    /// is full. The connection is registered until the returned [`Ticket`] is dropped.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Ticket, Refused> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let from_source = inner.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.max_per_source {
            // The source makes room among its own connections (a client that opens a new
            // connection before the host saw the last one close, many machines behind one NAT
            // address); only when all of them are busy is the new one refused.
            let Some(victim) = inner.victim(Some(source)) else {
                drop(inner);
                self.refused(Refused::SourceLimit, source);
                return Err(Refused::SourceLimit);
            };
            inner = self.evict(inner, victim, "source_limit");
        } else if inner.conns.len() >= self.limits.max_connections {
            let Some(victim) = inner.victim(None) else {
                drop(inner);
                self.refused(Refused::Full, source);
                return Err(Refused::Full);
            };
            inner = self.evict(inner, victim, "full");
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let cancel = CancellationToken::new();
        inner.conns.insert(
            id,
            Entry {
                source,
                phase: Phase::Idle,
                since: Instant::now(),
                cancel: cancel.clone(),
            },
        );
        *inner.per_source.entry(source).or_insert(0) += 1;
        Ok(Ticket {
            admission: Arc::clone(self),
            id,
            cancel,
        })
    }

    /// Cancels and unregisters `victim`; returns the lock again for the caller's insert.
    fn evict<'a>(
        &'a self,
        mut inner: std::sync::MutexGuard<'a, Inner>,
        victim: u64,
        reason: &'static str,
    ) -> std::sync::MutexGuard<'a, Inner> {
        let Some(entry) = inner.conns.remove(&victim) else {
            return inner;
        };
        entry.cancel.cancel();
        inner.release(entry.source);
        inner.evicted_total += 1;
        drop(inner);
        metrics::counter!("tally_connections_evicted_total", "listener" => self.name, "reason" => reason)
            .increment(1);
        if let Some(count) = self.evictions.tick() {
            let idle_ms = u64::try_from(entry.since.elapsed().as_millis()).unwrap_or(u64::MAX);
            warn!(
                listener = self.name,
                source = %entry.source,
                reason,
                idle_ms,
                evicted = count,
                "connection limit reached: evicting the connection idle or slow the longest (counted every 10 s)"
            );
        }
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections registered now.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .conns
            .len()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections registered now that are in `phase`.
    pub fn count_in(&self, phase: Phase) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .conns
            .values()
            .filter(|e| e.phase == phase)
            .count()
    }

    /// Connections evicted since the registry was made.
    pub fn evicted(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .evicted_total
    }

    fn refused(&self, why: Refused, source: IpAddr) {
        let reason = match why {
            Refused::SourceLimit => "source_limit",
            Refused::Full => "full",
        };
        metrics::counter!("tally_connections_refused_total", "listener" => self.name, "reason" => reason)
            .increment(1);
        if let Some(count) = self.refusals.tick() {
            warn!(
                listener = self.name,
                %source,
                reason,
                refused = count,
                "connection refused at accept (counted every 10 s)"
            );
        }
    }
}

/// A connection's place in the registry; dropping it frees the place.
pub struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("id", &self.id).finish()
    }
}

impl Ticket {
    /// Records that the connection entered `phase` now (its progress time for eviction).
    pub fn set_phase(&self, phase: Phase) {
        let mut inner = self
            .admission
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = inner.conns.get_mut(&self.id) {
            entry.phase = phase;
            entry.since = Instant::now();
        }
    }

    /// Completes when the connection was evicted: the caller closes it without a reply.
    pub fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Whether the connection was evicted.
    pub fn is_evicted(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self
            .admission
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = inner.conns.remove(&self.id) {
            inner.release(entry.source);
        }
    }
}

/// A warning caused by hostile input, logged the first time and then at most every
/// [`LOG_EVERY`] with the number of occurrences since.
#[derive(Debug)]
pub struct RateLimitedWarn {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Default for RateLimitedWarn {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimitedWarn {
    /// A fresh limiter: the next [`tick`](Self::tick) logs.
    pub const fn new() -> Self {
        Self {
            state: Mutex::new((None, 0)),
        }
    }

    /// Counts one occurrence; returns `Some(occurrences since the last log line)` when the
    /// caller should log now.
    pub fn tick(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.1 += 1;
        let due = state.0.is_none_or(|last| last.elapsed() >= LOG_EVERY);
        if due {
            let count = state.1;
            *state = (Some(Instant::now()), 0);
            Some(count)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

    fn registry(max_connections: usize, max_per_source: usize) -> Arc<Admission> {
        Admission::new(
            "test",
            AdmissionLimits {
                max_connections,
                max_per_source,
            },
        )
    }

    #[test]
    fn per_source_cap_evicts_within_the_source_then_refuses_when_all_busy() {
        let reg = registry(10, 2);
        let other = reg.admit(B).expect("other source, oldest of all");
        let first = reg.admit(A).expect("first");
        let second = reg.admit(A).expect("second");
        let third = reg.admit(A).expect("third evicts the source's idlest");
        assert!(first.is_evicted() && !other.is_evicted() && !second.is_evicted());
        second.set_phase(Phase::Busy);
        third.set_phase(Phase::Busy);
        assert_eq!(reg.admit(A).err(), Some(Refused::SourceLimit));
        assert!(reg.admit(B).is_ok(), "another source is not affected");
        drop(third);
        assert!(reg.admit(A).is_ok(), "a freed place can be taken again");
    }

    #[test]
    fn when_full_the_oldest_idle_connection_is_evicted() {
        let reg = registry(3, 10);
        let oldest = reg.admit(A).expect("1");
        let busy = reg.admit(A).expect("2");
        let newer = reg.admit(B).expect("3");
        busy.set_phase(Phase::Busy);
        newer.set_phase(Phase::Receiving);
        let _new = reg.admit(B).expect("admitted by evicting");
        assert!(oldest.is_evicted(), "the oldest idle connection goes first");
        assert!(!busy.is_evicted() && !newer.is_evicted());
        assert_eq!(reg.len(), 3);
        assert_eq!(reg.evicted(), 1);
        let _newest = reg.admit(A).expect("admitted by evicting");
        assert!(newer.is_evicted(), "then the slow one; the busy one never");
        assert!(!busy.is_evicted());
    }

    #[test]
    fn the_source_holding_most_connections_is_evicted_first() {
        let reg = registry(3, 10);
        let lone = reg.admit(A).expect("oldest, but its source holds one");
        let flood1 = reg.admit(B).expect("2");
        let flood2 = reg.admit(B).expect("3");
        let _new = reg.admit(A).expect("admitted by evicting");
        assert!(!lone.is_evicted(), "a source with one connection is spared");
        assert!(
            flood1.is_evicted() && !flood2.is_evicted(),
            "the flood's oldest goes"
        );
    }

    #[test]
    fn full_of_busy_connections_refuses() {
        let reg = registry(1, 10);
        let busy = reg.admit(A).expect("1");
        busy.set_phase(Phase::Busy);
        assert_eq!(reg.admit(B).err(), Some(Refused::Full));
        busy.set_phase(Phase::Idle);
        assert!(reg.admit(B).is_ok());
        assert!(busy.is_evicted());
    }

    #[test]
    fn an_evicted_ticket_dropped_later_does_not_free_a_second_place() {
        let reg = registry(1, 2);
        let old = reg.admit(A).expect("1");
        let new = reg.admit(A).expect("evicts the first");
        assert!(old.is_evicted());
        drop(old);
        assert_eq!(reg.len(), 1);
        assert!(!new.is_evicted());
        let _third = reg
            .admit(A)
            .expect("evicts the second: A holds one place, not zero");
        assert!(new.is_evicted());
        drop(new);
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn rate_limited_warning_logs_once_then_counts() {
        let warn = RateLimitedWarn::new();
        assert_eq!(warn.tick(), Some(1));
        assert_eq!(warn.tick(), None);
        assert_eq!(warn.tick(), None);
    }
}
