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
//! **Sources are groups, and progress protects (issue 21).** A "source" is an IPv4 address or an
//! IPv6 /64 ([`SourceKey`]): one machine or one customer usually holds a whole /64, so an attacker
//! with many IPv6 addresses of one prefix counts as one source for the per-source cap and for
//! eviction. And eviction does not pick the group that merely holds the most connections (a NAT
//! or VDI gateway carrying many real clients would be the preferred victim): it prefers a
//! connection that has never completed a request over one that has, then the group holding the
//! most such *stalled* connections, then the group holding the most evictable ones, then the
//! oldest progress. Clients that complete requests through one address are evicted last.
//!
//! Hostile input must not flood the log either: evictions and refusals are logged once, then as
//! a count at most every [`LOG_EVERY`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
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
    /// Connections open at once from one source (an IPv4 address or an IPv6 /64, loopback
    /// included: [`SourceKey`]); over it, the source's own idlest connection is evicted, or the
    /// new one closed if all are busy.
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

/// The source a connection counts against: an IPv4 address, or the /64 prefix of an IPv6
/// address (an IPv4-mapped IPv6 address counts as its IPv4 address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceKey {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6Prefix(u64),
}

impl SourceKey {
    /// The group `ip` belongs to.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Self::V4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4),
                None => Self::V6Prefix((u128::from(a) >> 64) as u64),
            },
        }
    }
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    per_source: HashMap<SourceKey, Group>,
    evicted_total: u64,
}

/// What one source holds.
#[derive(Clone, Copy, Debug, Default)]
struct Group {
    /// Connections registered.
    held: usize,
    /// Of those, not busy (idle or receiving).
    evictable: usize,
    /// Of those, evictable and never having completed a request.
    stalled: usize,
}

struct Entry {
    source: IpAddr,
    key: SourceKey,
    phase: Phase,
    since: Instant,
    /// Requests this connection completed (a `Busy` phase it left).
    served: u64,
    cancel: CancellationToken,
}

impl Entry {
    fn evictable(&self) -> bool {
        self.phase != Phase::Busy
    }

    fn stalled(&self) -> bool {
        self.evictable() && self.served == 0
    }
}

impl Inner {
    fn group(&mut self, key: SourceKey) -> &mut Group {
        self.per_source.entry(key).or_default()
    }

    /// Adds (`add`) or removes what a connection (its source, evictable, stalled) contributes
    /// to its group's counts.
    fn account(&mut self, e: (SourceKey, bool, bool), add: bool) {
        let (key, evictable, stalled) = e;
        let g = self.group(key);
        let step = |n: &mut usize, on: bool| {
            if on {
                *n = if add { *n + 1 } else { n.saturating_sub(1) };
            }
        };
        step(&mut g.evictable, evictable);
        step(&mut g.stalled, stalled);
    }

    fn release(&mut self, entry: &Entry) {
        self.account((entry.key, entry.evictable(), entry.stalled()), false);
        if let Some(g) = self.per_source.get_mut(&entry.key) {
            g.held = g.held.saturating_sub(1);
            if g.held == 0 {
                self.per_source.remove(&entry.key);
            }
        }
    }

    /// The connection to evict, among the evictable ones (with `source`, only that source's):
    /// first one that never completed a request, from the source holding the most such stalled
    /// connections, then the most evictable ones (a flood pays before a gateway whose clients
    /// make progress), and among those the one with the oldest progress.
    fn victim(&self, source: Option<SourceKey>) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, e)| e.evictable() && source.is_none_or(|s| e.key == s))
            .max_by_key(|(id, e)| {
                let g = self.per_source.get(&e.key).copied().unwrap_or_default();
                (
                    e.stalled(),
                    g.stalled,
                    g.evictable,
                    std::cmp::Reverse(e.since),
                    std::cmp::Reverse(**id),
                )
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
        let key = SourceKey::of(source);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let from_source = inner.per_source.get(&key).map_or(0, |g| g.held);
        if from_source >= self.limits.max_per_source {
            // The source makes room among its own connections (a client that opens a new
            // connection before the host saw the last one close, many machines behind one NAT
            // address); only when all of them are busy is the new one refused.
            let Some(victim) = inner.victim(Some(key)) else {
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
                key,
                phase: Phase::Idle,
                since: Instant::now(),
                served: 0,
                cancel: cancel.clone(),
            },
        );
        inner.group(key).held += 1;
        inner.account((key, true, true), true);
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
        inner.release(&entry);
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
        let Some(entry) = inner.conns.get_mut(&self.id) else {
            return;
        };
        let before = (entry.key, entry.evictable(), entry.stalled());
        if entry.phase == Phase::Busy && phase != Phase::Busy {
            // The request was answered: this connection makes progress.
            entry.served += 1;
        }
        entry.phase = phase;
        entry.since = Instant::now();
        let after = (entry.key, entry.evictable(), entry.stalled());
        inner.account(before, false);
        inner.account(after, true);
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
            inner.release(&entry);
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
#[path = "admission_tests.rs"]
mod tests;
