//! The host's per-pool CMID tables: the counting rules R2–R5.
//!
//! Each pool has a table of CMIDs with the time each was last seen. A request records its CMID
//! (R4: a renewal refreshes the entry and does not raise the count), entries older than 30 days
//! are dropped (R4), the table's capacity grows to twice the highest threshold requested and
//! never shrinks (R5), and when the table is over capacity the least recently seen entry gives
//! way (R5). The count reported is the table's size, requester included (R2).

use std::collections::{BTreeSet, HashMap};

use uuid::Uuid;

use crate::time::{DAY_MS, Timestamp};

/// R4: an entry lives 30 days from its last request.
pub const ENTRY_LIFETIME_MS: i64 = 30 * DAY_MS;

/// What one request changed in a pool's table, for the store to persist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableChange {
    /// The pool.
    pub pool: Uuid,
    /// The table's capacity after the request (R5).
    pub capacity: u32,
    /// Whether this request raised the capacity (so the store need not rewrite it otherwise).
    pub capacity_changed: bool,
    /// The requester's CMID and the time it was seen.
    pub upsert: (Uuid, Timestamp),
    /// Entries that expired or gave way.
    pub removed: Vec<Uuid>,
    /// Other entries whose last-seen time lay in the future and was pulled back to the request's
    /// time (X5), with that time.
    pub pulled_back: Vec<(Uuid, Timestamp)>,
}

/// A pool's table as stored, to rebuild it at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// The pool.
    pub pool: Uuid,
    /// The table's capacity (R5).
    pub capacity: u32,
    /// Entries: CMID and last-seen time.
    pub entries: Vec<(Uuid, Timestamp)>,
}

/// One pool's table.
#[derive(Clone, Debug, Default)]
pub struct PoolTable {
    capacity: u32,
    last_seen: HashMap<Uuid, Timestamp>,
    by_age: BTreeSet<(Timestamp, Uuid)>,
}

impl PoolTable {
    /// The current capacity (R5).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Entries still alive at `now` (R4), without changing the table.
    pub fn count_at(&self, now: Timestamp) -> u32 {
        let cutoff = Timestamp(now.0.saturating_sub(ENTRY_LIFETIME_MS));
        self.by_age.range((cutoff, Uuid::max())..).count() as u32
    }

    /// Every entry (CMID, last seen), live or not yet pruned, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = (Uuid, Timestamp)> + '_ {
        self.last_seen.iter().map(|(c, t)| (*c, *t))
    }

    /// Whether `cmid` has a live entry at `now`.
    pub fn contains(&self, cmid: Uuid, now: Timestamp) -> bool {
        self.last_seen
            .get(&cmid)
            .is_some_and(|t| t.0.saturating_add(ENTRY_LIFETIME_MS) > now.0)
    }

    fn insert(&mut self, cmid: Uuid, at: Timestamp) {
        if let Some(old) = self.last_seen.insert(cmid, at) {
            self.by_age.remove(&(old, cmid));
        }
        self.by_age.insert((at, cmid));
    }

    fn remove_oldest(&mut self, keep: Uuid) -> Option<Uuid> {
        let victim = self.by_age.iter().find(|(_, c)| *c != keep).copied()?;
        self.by_age.remove(&victim);
        self.last_seen.remove(&victim.1);
        Some(victim.1)
    }

    /// Records a request from `cmid` for an edition with `threshold` at `now`, and returns the
    /// count (requester included) and what changed.
    pub fn record(
        &mut self,
        pool: Uuid,
        cmid: Uuid,
        threshold: u16,
        now: Timestamp,
    ) -> (u32, TableChange) {
        let mut removed = Vec::new();
        // X5: an entry stamped beyond now (a clock that ran ahead) is treated as seen now, so it
        // lapses within 30 days of this clock instead of living on (the measured failure: machines
        // seen while a host ran ten years ahead never expired).
        let mut pulled_back = Vec::new();
        let ahead = Timestamp(now.0.saturating_add(crate::clock::CLOCK_TOLERANCE_MS));
        let future: Vec<(Timestamp, Uuid)> = self
            .by_age
            .range((ahead, Uuid::max())..)
            .filter(|(t, _)| *t > ahead)
            .copied()
            .collect();
        for (_, c) in future {
            self.insert(c, now);
            if c != cmid {
                pulled_back.push((c, now));
            }
        }
        // R4: entries not renewed within 30 days are removed. An entry whose last request is
        // exactly 30 days ago has lived its 30 days.
        let cutoff = Timestamp(now.0.saturating_sub(ENTRY_LIFETIME_MS));
        while let Some(&(t, c)) = self.by_age.first() {
            if t > cutoff {
                break;
            }
            self.by_age.remove(&(t, c));
            self.last_seen.remove(&c);
            if c != cmid {
                removed.push(c);
            }
        }
        // R5: capacity is twice the highest threshold requested so far; it never shrinks.
        let before = self.capacity;
        self.capacity = self.capacity.max(2 * u32::from(threshold));
        // R4: a renewal refreshes the entry (new 30-day period) without raising the count.
        // A clock that went back never moves an entry's last-seen time backwards.
        let at = self.last_seen.get(&cmid).map_or(now, |&old| old.max(now));
        self.insert(cmid, at);
        // R5: when full, the least recently seen entry gives way (never the requester).
        while self.last_seen.len() > self.capacity as usize {
            match self.remove_oldest(cmid) {
                Some(c) => removed.push(c),
                None => break,
            }
        }
        pulled_back.retain(|(c, _)| self.last_seen.contains_key(c));
        let count = self.last_seen.len() as u32;
        let change = TableChange {
            pool,
            capacity: self.capacity,
            capacity_changed: self.capacity != before,
            upsert: (cmid, at),
            removed,
            pulled_back,
        };
        (count, change)
    }
}

/// All pools' tables.
#[derive(Clone, Debug, Default)]
pub struct CountTables {
    pools: HashMap<Uuid, PoolTable>,
}

impl CountTables {
    /// Rebuilds the tables from stored snapshots.
    pub fn from_snapshots(snapshots: impl IntoIterator<Item = PoolSnapshot>) -> Self {
        let mut tables = Self::default();
        for snap in snapshots {
            let table = tables.pools.entry(snap.pool).or_default();
            table.capacity = snap.capacity;
            for (cmid, at) in snap.entries {
                table.insert(cmid, at);
            }
        }
        tables
    }

    /// Records a request (see [`PoolTable::record`]).
    pub fn record(
        &mut self,
        pool: Uuid,
        cmid: Uuid,
        threshold: u16,
        now: Timestamp,
    ) -> (u32, TableChange) {
        self.pools
            .entry(pool)
            .or_default()
            .record(pool, cmid, threshold, now)
    }

    /// A pool's table, if any request reached it.
    pub fn pool(&self, pool: Uuid) -> Option<&PoolTable> {
        self.pools.get(&pool)
    }

    /// Every pool's id, live count at `now`, and capacity.
    pub fn summary(&self, now: Timestamp) -> Vec<(Uuid, u32, u32)> {
        let mut out: Vec<_> = self
            .pools
            .iter()
            .map(|(id, t)| (*id, t.count_at(now), t.capacity()))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: Uuid = Uuid::from_u128(1);

    fn cmid(n: u128) -> Uuid {
        Uuid::from_u128(1000 + n)
    }

    // R2: the count includes the requester.
    #[test]
    fn r2_count_includes_requester() {
        let mut t = CountTables::default();
        assert_eq!(t.record(POOL, cmid(1), 25, Timestamp(0)).0, 1);
        assert_eq!(t.record(POOL, cmid(2), 25, Timestamp(1)).0, 2);
    }

    // R3: one count per pool across kinds: clients 1,2,3 then servers 4 and 5.
    #[test]
    fn r3_one_count_across_kinds() {
        let mut t = CountTables::default();
        let counts: Vec<u32> = [(1, 25), (2, 25), (3, 25), (4, 5), (5, 5)]
            .iter()
            .map(|&(n, th)| t.record(POOL, cmid(n), th, Timestamp(n as i64)).0)
            .collect();
        assert_eq!(counts, vec![1, 2, 3, 4, 5]);
        // Another pool has its own count.
        assert_eq!(t.record(Uuid::from_u128(2), cmid(9), 5, Timestamp(9)).0, 1);
    }

    // R4: renewals refresh the entry and do not raise the count.
    #[test]
    fn r4_renewal_does_not_raise_count_and_refreshes() {
        let mut t = CountTables::default();
        t.record(POOL, cmid(1), 5, Timestamp(0));
        t.record(POOL, cmid(2), 5, Timestamp(0));
        let day29 = Timestamp(0).plus_days(29);
        assert_eq!(t.record(POOL, cmid(1), 5, day29).0, 2);
        // Day 31: cmid 2 (last seen day 0) expired; cmid 1 (refreshed day 29) lives on.
        let day31 = Timestamp(0).plus_days(31);
        let (count, change) = t.record(POOL, cmid(3), 5, day31);
        assert_eq!(count, 2);
        assert_eq!(change.removed, vec![cmid(2)]);
    }

    // R4: an entry not renewed within 30 days is removed and the count drops by one.
    #[test]
    fn r4_entry_expires_after_30_days() {
        let mut t = CountTables::default();
        t.record(POOL, cmid(1), 5, Timestamp(0));
        t.record(POOL, cmid(2), 5, Timestamp(DAY_MS));
        let table = t.pool(POOL).expect("pool exists");
        assert_eq!(table.count_at(Timestamp(ENTRY_LIFETIME_MS - 1)), 2);
        assert_eq!(table.count_at(Timestamp(ENTRY_LIFETIME_MS)), 1);
        assert!(!table.contains(cmid(1), Timestamp(ENTRY_LIFETIME_MS)));
        assert_eq!(
            t.record(POOL, cmid(2), 5, Timestamp(ENTRY_LIFETIME_MS)).0,
            1
        );
    }

    // R5: capacity is 2x the highest threshold requested; 10 while only servers asked.
    #[test]
    fn r5_table_saturates_at_twice_highest_threshold() {
        let mut t = CountTables::default();
        let mut last = 0;
        for n in 0..15 {
            last = t.record(POOL, cmid(n), 5, Timestamp(n as i64)).0;
        }
        assert_eq!(last, 10);
        // The least recently seen gave way: cmid 0..4 are gone.
        let table = t.pool(POOL).expect("pool");
        assert!(!table.contains(cmid(0), Timestamp(20)));
        assert!(table.contains(cmid(14), Timestamp(20)));
        // A client edition raises the capacity to 50.
        for n in 15..80 {
            last = t.record(POOL, cmid(n), 25, Timestamp(n as i64)).0;
        }
        assert_eq!(last, 50);
        // It never shrinks: server requests later still see 50.
        assert_eq!(t.record(POOL, cmid(100), 5, Timestamp(200)).0, 50);
        assert_eq!(t.pool(POOL).map(PoolTable::capacity), Some(50));
    }

    // R5: the requester never gives way, even if every entry has the same timestamp.
    #[test]
    fn r5_requester_is_never_evicted() {
        let mut t = CountTables::default();
        for n in (0..20).rev() {
            t.record(POOL, cmid(n), 5, Timestamp(0));
            assert!(
                t.pool(POOL)
                    .is_some_and(|p| p.contains(cmid(n), Timestamp(0)))
            );
        }
    }

    // X5, R4: entries stamped by a clock that ran ten years ahead are pulled back to the next
    // request's time and lapse 30 days after it; the requester's own entry too.
    #[test]
    fn x5_future_entries_are_pulled_back_and_lapse_within_30_days() {
        let t0 = Timestamp(1_800_000_000_000);
        let ahead = t0.plus_days(3650);
        let mut t = CountTables::default();
        for n in 0..5 {
            t.record(POOL, cmid(n), 5, ahead);
        }
        // Back at real time: the five were seen (at some real moment), so they count now...
        let (count, change) = t.record(POOL, cmid(5), 5, t0);
        assert_eq!(count, 6);
        assert_eq!(change.pulled_back.len(), 5);
        assert!(change.pulled_back.iter().all(|(_, at)| *at == t0));
        // ...a renewal does not keep its future time...
        let (_, change) = t.record(POOL, cmid(0), 5, t0.plus_days(2));
        assert_eq!(change.upsert, (cmid(0), t0.plus_days(2)));
        // ...and 30 days of real time later, only machines seen since count.
        let (count, change) = t.record(POOL, cmid(9), 5, t0.plus_days(31));
        assert_eq!(count, 2, "cmid 0 (seen day 2) and the requester");
        assert_eq!(change.removed.len(), 5);
        // Within the tolerance a time ahead is kept (clocks differ by a little).
        let mut t = CountTables::default();
        let near = Timestamp(t0.0 + 60_000);
        t.record(POOL, cmid(1), 5, near);
        assert!(t.record(POOL, cmid(2), 5, t0).1.pulled_back.is_empty());
    }

    #[test]
    fn snapshots_rebuild_the_same_tables() {
        let mut t = CountTables::default();
        for n in 0..12 {
            t.record(POOL, cmid(n), 5, Timestamp(n as i64));
        }
        let table = t.pool(POOL).expect("pool");
        let snap = PoolSnapshot {
            pool: POOL,
            capacity: table.capacity(),
            entries: table.last_seen.iter().map(|(c, t)| (*c, *t)).collect(),
        };
        let rebuilt = CountTables::from_snapshots([snap]);
        assert_eq!(rebuilt.summary(Timestamp(20)), t.summary(Timestamp(20)));
    }
}
