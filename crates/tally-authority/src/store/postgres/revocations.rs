//! The PostgreSQL side of taking trust back (X7): certificates, supersession and the
//! revocation list's rows, for any number of authority processes on one database.
//!
//! Lock order, the same in every transaction: the key's row (`lock_key`) first, then the
//! revocation list's advisory lock. Under the advisory lock a new row's id is `MAX(id) + 1`
//! read in its own statement (READ COMMITTED: a fresh snapshot), so ids are dense, unique and
//! commit in order: a list of serial N always holds every row up to N.

use deadpool_postgres::GenericClient;
use tally_core::time::Timestamp;
use tally_proto::revocation::{Entry, Reason, Subject};

use super::{Fail, bad};
use crate::store::{NewCertificate, RevocationRecord, subject_columns, subject_from_columns};

/// The advisory lock of the revocation list: "tallyREV".
const LIST_LOCK_KEY: i64 = 0x7461_6c6c_7952_4556;

/// Adds `subject` to the list unless it is there; `true` if added.
pub(super) async fn add(
    c: &impl GenericClient,
    subject: &Subject,
    reason: Reason,
    now: Timestamp,
) -> Result<bool, Fail> {
    c.execute("SELECT pg_advisory_xact_lock($1)", &[&LIST_LOCK_KEY])
        .await?;
    let (kind, text) = subject_columns(subject);
    let n = c
        .execute(
            "INSERT INTO authority_revocations (id, subject_kind, subject, reason, revoked_at)
             SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4 FROM authority_revocations
             ON CONFLICT (subject_kind, subject) DO NOTHING",
            &[&kind, &text, &reason.name(), &now.millis()],
        )
        .await?;
    Ok(n > 0)
}

/// Records `cert` and supersedes the earlier live certificates of its key and machine. The
/// caller holds the key's row lock.
pub(super) async fn record_certificate(
    c: &impl GenericClient,
    cert: &NewCertificate,
    now: Timestamp,
) -> Result<Vec<[u8; 32]>, Fail> {
    let fp = tally_core::hex::to_hex(&cert.fingerprint);
    let serial = i64::from(cert.serial);
    let older = c
        .query(
            "UPDATE authority_certificates SET superseded_at = $4
             WHERE serial = $1 AND hardware = $2 AND superseded_at IS NULL AND fingerprint <> $3
             RETURNING fingerprint",
            &[&serial, &cert.hardware, &fp, &now.millis()],
        )
        .await?;
    let mut superseded = Vec::with_capacity(older.len());
    for row in older {
        let text: String = row.try_get(0)?;
        let Some(subject @ Subject::Certificate(bytes)) =
            subject_from_columns("certificate", &text)
        else {
            return Err(bad("authority_certificates.fingerprint"));
        };
        add(c, &subject, Reason::Superseded, now).await?;
        superseded.push(bytes);
    }
    c.execute(
        "INSERT INTO authority_certificates (fingerprint, serial, hardware, host_key, issued_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (fingerprint) DO NOTHING",
        &[&fp, &serial, &cert.hardware, &cert.host_key, &now.millis()],
    )
    .await?;
    Ok(superseded)
}

/// Every row, by id; a row the code cannot read is an error, never skipped.
pub(super) async fn all(c: &impl GenericClient) -> Result<Vec<RevocationRecord>, Fail> {
    let rows = c
        .query(
            "SELECT id, subject_kind, subject, reason, revoked_at FROM authority_revocations ORDER BY id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let kind: String = r.try_get(1)?;
            let text: String = r.try_get(2)?;
            let reason: String = r.try_get(3)?;
            Ok(RevocationRecord {
                id: u32::try_from(r.try_get::<_, i64>(0)?)
                    .map_err(|_| bad("authority_revocations.id"))?,
                entry: Entry {
                    subject: subject_from_columns(&kind, &text)
                        .ok_or_else(|| bad("authority_revocations.subject"))?,
                    reason: Reason::from_name(&reason)
                        .ok_or_else(|| bad("authority_revocations.reason"))?,
                    revoked_at: r.try_get(4)?,
                },
            })
        })
        .collect()
}
