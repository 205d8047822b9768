//! X6 on SQLite: the registry row's installation sequence, read and noted in the writer's
//! transaction (the writer is the only one, so the read is what is stored).

use rusqlite::{Connection, OptionalExtension, params};
use tally_core::clones::Seen;
use tally_core::time::Timestamp;
use uuid::Uuid;

use crate::group_commit::diff::Notes;

/// What the registry holds for `cmid`.
pub(super) fn seen(conn: &Connection, cmid: Uuid) -> rusqlite::Result<Option<Seen>> {
    conn.prepare_cached(
        "SELECT sequence, hardware_digest, last_seen FROM registry WHERE cmid = ?1",
    )?
    .query_row(params![cmid.as_bytes()], |row| {
        let digest: Option<Vec<u8>> = row.get(1)?;
        Ok(Seen {
            sequence: row
                .get::<_, Option<i64>>(0)?
                .and_then(|s| u32::try_from(s).ok()),
            hardware_digest: digest.and_then(|d| <[u8; 8]>::try_from(d.as_slice()).ok()),
            last_seen: Timestamp(row.get(2)?),
        })
    })
    .optional()
}

/// Writes a batch's notes on the registry rows (written before): a number the installation sent
/// is stored (never lowered); a clone adds to `clones`.
pub(super) fn note(conn: &Connection, notes: &Notes) -> rusqlite::Result<()> {
    let mut store = conn.prepare_cached(
        "UPDATE registry SET sequence = ?2, hardware_digest = ?3
         WHERE cmid = ?1 AND (sequence IS NULL OR sequence < ?2)",
    )?;
    for (cmid, (sequence, digest)) in &notes.sequences {
        store.execute(params![
            cmid.as_bytes(),
            i64::from(*sequence),
            digest.as_slice()
        ])?;
    }
    let mut clone =
        conn.prepare_cached("UPDATE registry SET clones = clones + 1 WHERE cmid = ?1")?;
    for cmid in &notes.clones {
        clone.execute(params![cmid.as_bytes()])?;
    }
    Ok(())
}
