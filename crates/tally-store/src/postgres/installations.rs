//! X6 on PostgreSQL: the registry rows of a batch's version-2 requests, read after the pool
//! locks are held (copies of one installation ask for one edition, so the pool lock orders
//! them across hosts), judged in request order (`crate::group_commit::diff`), and noted with the
//! batch's writes.

use std::collections::HashMap;

use deadpool_postgres::Object;
use tally_core::clones::Seen;
use tally_core::time::Timestamp;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::backend;
use crate::StoreError;
use crate::group_commit::diff::Notes;

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

/// The stored rows of `cmids` (what the batch's judge starts from).
pub(super) async fn read(
    client: &Object,
    cmids: &[Uuid],
) -> Result<HashMap<Uuid, Seen>, StoreError> {
    let st = client
        .prepare_cached(READ)
        .await
        .map_err(backend("prepare"))?;
    let mut seen = HashMap::with_capacity(cmids.len());
    for row in client
        .query(&st, &[&cmids])
        .await
        .map_err(backend("read registry"))?
    {
        let digest: Option<Vec<u8>> = row.get(2);
        seen.insert(
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
    Ok(seen)
}

/// The notes as statement parameters: (sequences: cmids, numbers, digests; clones).
pub(super) fn rows(notes: &Notes) -> (Vec<Uuid>, Vec<i64>, Vec<Vec<u8>>, Vec<Uuid>) {
    let mut cmids = Vec::new();
    let mut numbers = Vec::new();
    let mut digests = Vec::new();
    for (cmid, (n, d)) in &notes.sequences {
        cmids.push(*cmid);
        numbers.push(i64::from(*n));
        digests.push(d.to_vec());
    }
    (cmids, numbers, digests, notes.clones.clone())
}

/// The parameters of [`NOTE_SEQUENCES`].
pub(super) fn sequence_params<'a>(
    cmids: &'a Vec<Uuid>,
    numbers: &'a Vec<i64>,
    digests: &'a Vec<Vec<u8>>,
) -> Vec<&'a (dyn ToSql + Sync)> {
    vec![cmids, numbers, digests]
}
