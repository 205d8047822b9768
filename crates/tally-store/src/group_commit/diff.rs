//! The counting diff: what one batch changes, decided on the pool tables as stored. Pure (no
//! I/O, no clock): both backends read the tables (and the registry rows X6 judges), call
//! [`count`], and write what it returns in their own SQL.
//!
//! For each request, in batch order: X6 judges the installation against what is stored (and
//! what the batch's earlier requests noted); a clone under `clones = "apart"` counts nothing
//! and is answered `clone_detected`; a refusal adds to its day's aggregate; anything else is
//! counted on its pool's table (R2–R5, [`CountTables::record`]). The tables' net change per
//! pool ([`PoolDiff`]: the capacity if it rose, the entries added or moved, the entries gone)
//! is what the backend writes, so a machine counted twice in one batch is written once.

use std::collections::{BTreeMap, HashMap, HashSet};

use tally_core::clones::{self, ClonePolicy, Seen, Verdict};
use tally_core::counting::{CountTables, PoolTable};
use tally_core::host::{Changes, Counted};
use tally_core::time::Timestamp;
use tally_proto::ResultCode;
use uuid::Uuid;

use super::{Answer, Work};
use crate::Event;

/// What a batch changed in one pool's table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PoolDiff {
    pub(crate) pool: Uuid,
    /// The new capacity, when the batch raised it (R5).
    pub(crate) capacity: Option<u32>,
    /// Entries added, renewed or pulled back (X5), with their last-seen time; by CMID.
    pub(crate) upserts: Vec<(Uuid, Timestamp)>,
    /// Entries that expired or gave way; by CMID.
    pub(crate) removed: Vec<Uuid>,
}

impl PoolDiff {
    /// The difference between a pool's table before and after a batch.
    pub(crate) fn between(pool: Uuid, before: &PoolTable, after: &PoolTable) -> Self {
        let old: HashMap<Uuid, Timestamp> = before.entries().collect();
        let mut kept: HashSet<Uuid> = HashSet::with_capacity(old.len());
        let mut upserts = Vec::new();
        for (cmid, at) in after.entries() {
            kept.insert(cmid);
            if old.get(&cmid) != Some(&at) {
                upserts.push((cmid, at));
            }
        }
        let mut removed: Vec<Uuid> = old.keys().filter(|c| !kept.contains(c)).copied().collect();
        upserts.sort_unstable();
        removed.sort_unstable();
        Self {
            pool,
            capacity: (after.capacity() != before.capacity()).then(|| after.capacity()),
            upserts,
            removed,
        }
    }
}

/// The installation notes a batch writes on registry rows (X6), after the registry rows.
#[derive(Debug, Default)]
pub(crate) struct Notes {
    /// The number (and hardware digest) to store per CMID: stored only if above what the row
    /// holds (never lowered).
    pub(crate) sequences: BTreeMap<Uuid, (u32, [u8; 8])>,
    /// A clone seen per entry (a CMID may repeat).
    pub(crate) clones: Vec<Uuid>,
}

/// The batch's judge (X6): what the registry holds, updated as the batch's requests are judged
/// in order, so a second request of one installation in the batch sees the first one's number.
#[derive(Debug, Default)]
pub(crate) struct Judge {
    seen: HashMap<Uuid, Seen>,
    notes: Notes,
}

/// Whether X6 judges this request: a counted version-2 request outside the bench pool.
fn is_judged(c: &Changes) -> bool {
    c.registry.installation.is_some()
        && c.counting.is_some()
        && !tally_core::bench::is_bench_pool(c.registry.pool)
}

impl Judge {
    /// The CMIDs whose registry rows the judge needs, sorted, once each.
    pub(crate) fn wanted<'a>(batch: impl Iterator<Item = &'a Changes>) -> Vec<Uuid> {
        let mut cmids: Vec<Uuid> = batch
            .filter(|c| is_judged(c))
            .map(|c| c.registry.cmid)
            .collect();
        cmids.sort_unstable();
        cmids.dedup();
        cmids
    }

    /// A judge over the stored rows the backend read ([`Judge::wanted`]).
    pub(crate) fn new(seen: HashMap<Uuid, Seen>) -> Self {
        Self {
            seen,
            notes: Notes::default(),
        }
    }

    /// Judges one request and notes what the batch must write; returns the verdict and what
    /// was stored before it.
    fn judge(&mut self, c: &Changes) -> Option<(Verdict, Option<Seen>)> {
        let ext = c.registry.installation.filter(|_| is_judged(c))?;
        let cmid = c.registry.cmid;
        let before = self.seen.get(&cmid).copied();
        let verdict = clones::judge(before.as_ref(), &ext, c.registry.seen_at);
        if verdict.stores() {
            self.seen.insert(
                cmid,
                Seen {
                    sequence: Some(ext.sequence),
                    hardware_digest: Some(ext.hardware_digest),
                    last_seen: c.registry.seen_at,
                },
            );
            self.notes
                .sequences
                .insert(cmid, (ext.sequence, ext.hardware_digest));
        } else if verdict.is_clone() {
            self.notes.clones.push(cmid);
        }
        Some((verdict, before))
    }
}

/// What a batch changes, for the backend to write in its transaction.
#[derive(Debug, Default)]
pub(crate) struct BatchDiff {
    /// One answer per job, in batch order.
    pub(crate) answers: Vec<Answer>,
    /// Every pool the batch counted in, in pool order.
    pub(crate) pools: Vec<PoolDiff>,
    /// The events to insert, in order (1009 for a clone, then its request's 12290; the events
    /// of an `Events` job where it stands in the batch).
    pub(crate) events: Vec<Event>,
    /// Refusals by (day, edition, result): how many, and the latest time (Unix ms).
    pub(crate) refusals: BTreeMap<(i64, Uuid, u32), (i64, i64)>,
    /// X6's notes.
    pub(crate) notes: Notes,
}

/// Counts a batch on `tables` (which hold at least the batch's pools as stored; a pool missing
/// from them is a new, empty one) and returns what changed. Settles each request's registry
/// update (count, activated; a clone counted apart loses its `counting` and gets
/// `clone_detected`), so the backend writes registry rows from the jobs afterwards: every job
/// whose `counting` is still set has one. Jobs that run alone answer [`Answer::Done`].
pub(crate) fn count<'a, A: 'a>(
    batch: impl IntoIterator<Item = &'a mut Work<A>>,
    tables: &mut CountTables,
    mut judge: Judge,
) -> BatchDiff {
    let mut diff = BatchDiff::default();
    let mut before: BTreeMap<Uuid, PoolTable> = BTreeMap::new();
    for work in batch {
        let changes = match work {
            Work::Changes(changes) => changes,
            Work::Events(list) => {
                diff.events.extend(list.iter().cloned());
                diff.answers.push(Answer::Done);
                continue;
            }
            Work::Alone(_) => {
                diff.answers.push(Answer::Done);
                continue;
            }
        };
        let judged = judge.judge(changes);
        let clone = judged.is_some_and(|(v, _)| v.is_clone());
        if let Some((Verdict::Clone { stored }, seen)) = judged {
            diff.events.push(crate::clone_event(
                changes,
                stored,
                seen.and_then(|s| s.hardware_digest),
            ));
        }
        if clone && changes.clone_policy == ClonePolicy::Apart {
            // Counted apart: this copy counts nothing under this CMID; it takes a new one and
            // asks again. Event 12290 says so; no registry row is written for it.
            changes.counting = None;
            changes.registry.result = ResultCode::CLONE_DETECTED;
            let mut counted = changes.settle(0);
            counted.clone = true;
            diff.answers.push(Answer::Counted(counted));
            diff.events.push(crate::activation_event(changes));
            continue;
        }
        let Some(req) = changes.counting else {
            // A refusal adds to its day's aggregate: bounded storage whatever is sent.
            let at = changes.registry.seen_at.millis();
            let e = diff
                .refusals
                .entry(crate::refusal_key(changes))
                .or_insert((0, at));
            e.0 += 1;
            e.1 = e.1.max(at);
            diff.answers.push(Answer::Counted(changes.settle(0)));
            continue;
        };
        before
            .entry(req.pool)
            .or_insert_with(|| tables.pool(req.pool).cloned().unwrap_or_default());
        let count = tables.apply(&req).0;
        let mut counted: Counted = changes.settle(count);
        counted.clone = clone;
        diff.answers.push(Answer::Counted(counted));
        diff.events.push(crate::activation_event(changes));
    }
    diff.pools = before
        .iter()
        .filter_map(|(pool, old)| Some(PoolDiff::between(*pool, old, tables.pool(*pool)?)))
        .collect();
    diff.notes = judge.notes;
    diff
}

#[cfg(test)]
mod tests;
