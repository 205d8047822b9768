//! What a batch writes, as arrays for `unnest` statements, and the statements themselves.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::batch::{Job, Statements, Work};
use crate::Event;
use crate::group_commit::diff::PoolDiff;

/// What a batch changed in one pool's table (`crate::group_commit::diff::PoolDiff`), as
/// statement parameters.
pub(super) struct PoolRows {
    pool: Uuid,
    capacity: Option<i32>,
    removed: Vec<Uuid>,
    cmids: Vec<Uuid>,
    seen: Vec<i64>,
}

impl PoolRows {
    pub(super) fn new(d: &PoolDiff) -> Self {
        Self {
            pool: d.pool,
            capacity: d.capacity.map(|c| i32::try_from(c).unwrap_or(i32::MAX)),
            removed: d.removed.clone(),
            cmids: d.upserts.iter().map(|(c, _)| *c).collect(),
            seen: d.upserts.iter().map(|(_, at)| at.millis()).collect(),
        }
    }

    pub(super) fn push_writes<'a>(
        &'a self,
        st: &'a Statements,
        writes: &mut Vec<(&'a tokio_postgres::Statement, Vec<&'a (dyn ToSql + Sync)>)>,
    ) {
        if let Some(capacity) = &self.capacity {
            writes.push((&st.capacity, vec![&self.pool, capacity]));
        }
        if !self.removed.is_empty() {
            writes.push((&st.delete_entries, vec![&self.pool, &self.removed]));
        }
        if !self.cmids.is_empty() {
            writes.push((
                &st.upsert_entries,
                vec![&self.pool, &self.cmids, &self.seen],
            ));
        }
    }
}

/// The batch's registry rows as arrays, one per machine: a machine that asked twice in one batch
/// ends as its latest request left it, with both requests counted.
pub(super) struct RegistryRows {
    pub(super) cmid: Vec<Uuid>,
    machine: Vec<String>,
    sku: Vec<Uuid>,
    pool: Vec<Uuid>,
    state: Vec<i16>,
    first_seen: Vec<i64>,
    pub(super) last_seen: Vec<i64>,
    result: Vec<i64>,
    count: Vec<i32>,
    activated: Vec<bool>,
    requests: Vec<i64>,
    served_by: Vec<String>,
}

impl RegistryRows {
    /// The rows of the bench pool's machines when `bench`, of every other machine otherwise.
    pub(super) fn new(batch: &[Job], served_by: &str, bench: bool) -> Self {
        let mut index: HashMap<Uuid, usize> = HashMap::new();
        let mut rows = Self {
            cmid: Vec::new(),
            machine: Vec::new(),
            sku: Vec::new(),
            pool: Vec::new(),
            state: Vec::new(),
            first_seen: Vec::new(),
            last_seen: Vec::new(),
            result: Vec::new(),
            count: Vec::new(),
            activated: Vec::new(),
            requests: Vec::new(),
            served_by: Vec::new(),
        };
        // In CMID order (a machine's requests keep their batch order): every batch takes the
        // registry's row locks in one order, so two batches never wait on each other in a cycle.
        let mut order: Vec<&Job> = batch.iter().collect();
        order.sort_by_key(|j| match &j.work {
            Work::Changes(c) => Some(c.registry.cmid),
            _ => None,
        });
        for job in order {
            let Work::Changes(c) = &job.work else {
                continue;
            };
            if c.counting.is_none() {
                continue; // refusals are aggregated, not registered
            }
            let r = &c.registry;
            if tally_core::bench::is_bench_pool(r.pool) != bench {
                continue;
            }
            let at = r.seen_at.millis();
            let count = i32::try_from(r.count).unwrap_or(i32::MAX);
            if let Some(&i) = index.get(&r.cmid) {
                rows.machine[i].clone_from(&r.machine_name);
                rows.sku[i] = r.sku;
                rows.pool[i] = r.pool;
                rows.state[i] = r.license_state as i16;
                rows.last_seen[i] = rows.last_seen[i].max(at);
                rows.result[i] = i64::from(r.result.0);
                rows.count[i] = count;
                rows.activated[i] = r.activated;
                rows.requests[i] += 1;
                continue;
            }
            index.insert(r.cmid, rows.cmid.len());
            rows.cmid.push(r.cmid);
            rows.machine.push(r.machine_name.clone());
            rows.sku.push(r.sku);
            rows.pool.push(r.pool);
            rows.state.push(r.license_state as i16);
            rows.first_seen.push(at);
            rows.last_seen.push(at);
            rows.result.push(i64::from(r.result.0));
            rows.count.push(count);
            rows.activated.push(r.activated);
            rows.requests.push(1);
            rows.served_by.push(served_by.to_owned());
        }
        rows
    }

    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.cmid,
            &self.machine,
            &self.sku,
            &self.pool,
            &self.state,
            &self.first_seen,
            &self.last_seen,
            &self.result,
            &self.count,
            &self.activated,
            &self.requests,
            &self.served_by,
        ]
    }
}

pub(super) struct EventRows {
    pub(super) at: Vec<i64>,
    id: Vec<i32>,
    level: Vec<String>,
    message: Vec<String>,
    data: Vec<String>,
    host: String,
}

impl EventRows {
    pub(super) fn new(events: &[Event], host: &str) -> Self {
        Self {
            at: events.iter().map(|e| e.at.millis()).collect(),
            id: events
                .iter()
                .map(|e| i32::try_from(e.event_id).unwrap_or(i32::MAX))
                .collect(),
            level: events.iter().map(|e| e.level.clone()).collect(),
            message: events.iter().map(|e| e.message.clone()).collect(),
            data: events.iter().map(|e| e.data.to_string()).collect(),
            host: host.to_owned(),
        }
    }

    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.at,
            &self.id,
            &self.level,
            &self.message,
            &self.data,
            &self.host,
        ]
    }
}

pub(super) struct RefusalRows {
    pub(super) day: Vec<i32>,
    sku: Vec<Uuid>,
    result: Vec<i64>,
    requests: Vec<i64>,
    last_at: Vec<i64>,
}

impl RefusalRows {
    pub(super) fn new(refusals: &BTreeMap<(i64, Uuid, u32), (i64, i64)>) -> Self {
        let mut rows = Self {
            day: Vec::new(),
            sku: Vec::new(),
            result: Vec::new(),
            requests: Vec::new(),
            last_at: Vec::new(),
        };
        for ((day, sku, result), (n, last)) in refusals {
            rows.day.push(i32::try_from(*day).unwrap_or(i32::MAX));
            rows.sku.push(*sku);
            rows.result.push(i64::from(*result));
            rows.requests.push(*n);
            rows.last_at.push(*last);
        }
        rows
    }

    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.day,
            &self.sku,
            &self.result,
            &self.requests,
            &self.last_at,
        ]
    }
}

/// The database's clock in Unix ms (X5): `clock_timestamp()`, the time the statement runs (not
/// the transaction's start, which precedes the wait for the pool locks).
pub(crate) const DATABASE_NOW: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8";

pub(super) const LOCK_POOL: &str = "SELECT capacity FROM pools WHERE pool = $1 FOR UPDATE";

pub(super) const READ_ENTRIES: &str =
    "SELECT pool, cmid, last_seen FROM pool_entries WHERE pool = ANY($1::uuid[])";

/// Every pool of a batch that has no row yet, in a statement of its own (outside the batch's
/// transaction), so that a batch only ever locks existing rows, in pool order.
pub(super) const CREATE_POOL: &str = "INSERT INTO pools (pool, capacity)
     SELECT p, 0 FROM unnest($1::uuid[]) AS t (p) ORDER BY p ON CONFLICT DO NOTHING";

pub(super) const UPDATE_CAPACITY: &str =
    "UPDATE pools SET capacity = GREATEST(capacity, $2) WHERE pool = $1";

pub(super) const DELETE_ENTRIES: &str =
    "DELETE FROM pool_entries WHERE pool = $1 AND cmid = ANY($2)";

pub(super) const UPSERT_ENTRIES: &str = "INSERT INTO pool_entries (pool, cmid, last_seen)
     SELECT $1, c, s FROM unnest($2::uuid[], $3::int8[]) AS t (c, s)
     ON CONFLICT (pool, cmid) DO UPDATE SET last_seen = EXCLUDED.last_seen";

/// The registry writes of a batch, on `registry` or (the bench pool's machines) on
/// `bench_registry`: the same statements, so a bench request costs what a real one does.
macro_rules! registry_writes {
    ($table:literal) => {
        (
            concat!(
                "INSERT INTO ",
                $table,
                " AS r (cmid, machine_name, sku, pool, license_state,
         first_seen, last_seen, last_result, last_count, activated, requests, served_by)
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::int2[],
         $6::int8[], $7::int8[], $8::int8[], $9::int4[], $10::bool[], $11::int8[], $12::text[])
     ON CONFLICT (cmid) DO UPDATE SET
         machine_name = EXCLUDED.machine_name, sku = EXCLUDED.sku, pool = EXCLUDED.pool,
         license_state = EXCLUDED.license_state,
         last_seen = GREATEST(r.last_seen, EXCLUDED.last_seen),
         last_result = EXCLUDED.last_result, last_count = EXCLUDED.last_count,
         activated = EXCLUDED.activated, requests = r.requests + EXCLUDED.requests,
         served_by = EXCLUDED.served_by
     RETURNING (xmax = 0)"
            ),
            // At the cap: machines already registered are updated, new ones are not added.
            concat!(
                "UPDATE ",
                $table,
                " r SET machine_name = u.m, sku = u.s, pool = u.p,
         license_state = u.ls, last_seen = GREATEST(r.last_seen, u.l), last_result = u.res,
         last_count = u.n, activated = u.a, requests = r.requests + u.q, served_by = u.h
     FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::int2[], $6::int8[],
         $7::int8[], $8::int8[], $9::int4[], $10::bool[], $11::int8[], $12::text[])
         AS u (c, m, s, p, ls, f, l, res, n, a, q, h)
     WHERE r.cmid = u.c
     RETURNING false"
            ),
        )
    };
}

/// (upsert, update at the cap) on `registry`.
pub(super) const REGISTRY_WRITES: (&str, &str) = registry_writes!("registry");
/// The same on `bench_registry`.
pub(super) const BENCH_REGISTRY_WRITES: (&str, &str) = registry_writes!("bench_registry");

pub(super) const INSERT_EVENTS: &str =
    "INSERT INTO events (at, event_id, level, message, data, host)
     SELECT a, i, l, m, d::jsonb, $6
     FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[], $5::text[]) AS t (a, i, l, m, d)";

pub(super) const UPSERT_REFUSALS: &str =
    "INSERT INTO refusals (day, sku, result, requests, last_at)
     SELECT * FROM unnest($1::int4[], $2::uuid[], $3::int8[], $4::int8[], $5::int8[])
     ON CONFLICT (day, sku, result) DO UPDATE SET
         requests = refusals.requests + EXCLUDED.requests,
         last_at = GREATEST(refusals.last_at, EXCLUDED.last_at)";
