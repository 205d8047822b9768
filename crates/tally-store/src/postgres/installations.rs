//! X6 on PostgreSQL: the registry rows of a batch's version-2 requests, read after the pool
//! locks are held (copies of one installation ask for one edition, so the pool lock orders
//! them across hosts), judged in request order, and noted with the batch's writes.

use std::collections::HashMap;

use deadpool_postgres::Object;
use tally_core::clones::{self, Seen, Verdict};
use tally_core::host::Changes;
use tally_core::time::Timestamp;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::backend;
use crate::StoreError;

const READ: &str =
    "SELECT cmid, sequence, hardware_digest, last_seen FROM registry WHERE cmid = ANY($1)";
/// Stores each installation's highest number (never lowers one a later batch stored).
pub(super) const NOTE_SEQUENCES: &str =
    "UPDATE registry r SET sequence = u.s, hardware_digest = u.d
     FROM unnest($1::uuid[], $2::int8[], $3::bytea[]) AS u (c, s, d)
     WHERE r.cmid = u.c AND (r.sequence IS NULL OR r.sequence < u.s)";
/// Counts another installation presenting a CMID.
pub(super) const NOTE_CLONES: &str =
    "UPDATE registry SET clones = clones + 1 WHERE cmid = ANY($1::uuid[])";

/// The batch's judge: what the registry holds, updated as the batch's requests are judged.
#[derive(Default)]
pub(super) struct Judge {
    seen: HashMap<Uuid, Seen>,
    sequences: HashMap<Uuid, (i64, Vec<u8>)>,
    clones: Vec<Uuid>,
}

/// The CMIDs of a batch's counted version-2 requests (the bench pool's are not judged).
fn judged<'a>(batch: impl Iterator<Item = &'a Changes>) -> Vec<Uuid> {
    let mut cmids: Vec<Uuid> = batch
        .filter(|c| is_judged(c))
        .map(|c| c.registry.cmid)
        .collect();
    cmids.sort_unstable();
    cmids.dedup();
    cmids
}

fn is_judged(c: &Changes) -> bool {
    c.registry.installation.is_some()
        && c.counting.is_some()
        && !tally_core::bench::is_bench_pool(c.registry.pool)
}

impl Judge {
    /// Reads the registry rows of the batch's judged CMIDs (none: no round trip).
    pub(super) async fn read<'a>(
        client: &Object,
        batch: impl Iterator<Item = &'a Changes>,
    ) -> Result<Self, StoreError> {
        let cmids = judged(batch);
        let mut judge = Self::default();
        if cmids.is_empty() {
            return Ok(judge);
        }
        let st = client
            .prepare_cached(READ)
            .await
            .map_err(backend("prepare"))?;
        for row in client
            .query(&st, &[&cmids])
            .await
            .map_err(backend("read registry"))?
        {
            let digest: Option<Vec<u8>> = row.get(2);
            judge.seen.insert(
                row.get(0),
                Seen {
                    sequence: row
                        .get::<_, Option<i64>>(1)
                        .and_then(|s| u32::try_from(s).ok()),
                    hardware_digest: digest.and_then(|d| <[u8; 8]>::try_from(d.as_slice()).ok()),
                    last_seen: Timestamp(row.get(3)),
                },
            );
        }
        Ok(judge)
    }

    /// Judges one request (in request order) and notes what the batch must write; returns the
    /// verdict and what was stored before it.
    pub(super) fn judge(&mut self, c: &Changes) -> Option<(Verdict, Option<Seen>)> {
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
            self.sequences.insert(
                cmid,
                (i64::from(ext.sequence), ext.hardware_digest.to_vec()),
            );
        } else if verdict.is_clone() {
            self.clones.push(cmid);
        }
        Some((verdict, before))
    }

    /// The notes as statement parameters: (sequences: cmids, numbers, digests; clones).
    pub(super) fn rows(&self) -> (Vec<Uuid>, Vec<i64>, Vec<Vec<u8>>, Vec<Uuid>) {
        let mut cmids = Vec::new();
        let mut numbers = Vec::new();
        let mut digests = Vec::new();
        for (cmid, (n, d)) in &self.sequences {
            cmids.push(*cmid);
            numbers.push(*n);
            digests.push(d.clone());
        }
        (cmids, numbers, digests, self.clones.clone())
    }
}

/// The parameters of [`NOTE_SEQUENCES`].
pub(super) fn sequence_params<'a>(
    cmids: &'a Vec<Uuid>,
    numbers: &'a Vec<i64>,
    digests: &'a Vec<Vec<u8>>,
) -> Vec<&'a (dyn ToSql + Sync)> {
    vec![cmids, numbers, digests]
}
