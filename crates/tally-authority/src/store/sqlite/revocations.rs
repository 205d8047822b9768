//! The SQLite side of taking trust back (X7): certificates, supersession and the revocation
//! list's rows. Every write runs in the caller's `BEGIN IMMEDIATE` transaction, so ids grow in
//! commit order.

use rusqlite::{Connection, OptionalExtension, params};
use tally_core::time::Timestamp;
use tally_proto::revocation::{Entry, Reason, Subject};

use crate::store::{NewCertificate, RevocationRecord, subject_columns, subject_from_columns};

/// Adds `subject` to the list unless it is there; `true` if added.
pub(super) fn add(
    c: &Connection,
    subject: &Subject,
    reason: Reason,
    now: Timestamp,
) -> rusqlite::Result<bool> {
    let (kind, text) = subject_columns(subject);
    let n = c.execute(
        "INSERT OR IGNORE INTO revocations (subject_kind, subject, reason, revoked_at) VALUES (?1, ?2, ?3, ?4)",
        params![kind, text, reason.name(), now.millis()],
    )?;
    Ok(n > 0)
}

/// Records `cert` and supersedes the earlier live certificates of its key and machine.
pub(super) fn record_certificate(
    c: &Connection,
    cert: &NewCertificate,
    now: Timestamp,
) -> rusqlite::Result<Vec<[u8; 32]>> {
    let fp = tally_core::hex::to_hex(&cert.fingerprint);
    let mut s = c.prepare(
        "SELECT fingerprint FROM certificates
         WHERE serial = ?1 AND hardware = ?2 AND superseded_at IS NULL AND fingerprint <> ?3",
    )?;
    let older: Vec<String> = s
        .query_map(params![cert.serial, cert.hardware, fp], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut superseded = Vec::with_capacity(older.len());
    for old in older {
        c.execute(
            "UPDATE certificates SET superseded_at = ?2 WHERE fingerprint = ?1",
            params![old, now.millis()],
        )?;
        if let Some(Subject::Certificate(bytes)) = subject_from_columns("certificate", &old) {
            add(c, &Subject::Certificate(bytes), Reason::Superseded, now)?;
            superseded.push(bytes);
        }
    }
    let known: Option<String> = c
        .query_row(
            "SELECT fingerprint FROM certificates WHERE fingerprint = ?1",
            params![fp],
            |r| r.get(0),
        )
        .optional()?;
    if known.is_none() {
        c.execute(
            "INSERT INTO certificates (fingerprint, serial, hardware, host_key, issued_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![fp, cert.serial, cert.hardware, cert.host_key, now.millis()],
        )?;
    }
    Ok(superseded)
}

/// Every row, by id. A row the code cannot read (a damaged database) is an error, never
/// skipped: a list missing a revocation would give trust back.
pub(super) fn all(c: &Connection) -> rusqlite::Result<Vec<RevocationRecord>> {
    let mut s = c.prepare(
        "SELECT id, subject_kind, subject, reason, revoked_at FROM revocations ORDER BY id",
    )?;
    s.query_map([], |r| {
        let (kind, text, reason): (String, String, String) = (r.get(1)?, r.get(2)?, r.get(3)?);
        let damaged = || {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                format!("revocations row {kind} {text} {reason} is damaged").into(),
            )
        };
        Ok(RevocationRecord {
            id: u32::try_from(r.get::<_, i64>(0)?).map_err(|_| damaged())?,
            entry: Entry {
                subject: subject_from_columns(&kind, &text).ok_or_else(damaged)?,
                reason: Reason::from_name(&reason).ok_or_else(damaged)?,
                revoked_at: r.get(4)?,
            },
        })
    })?
    .collect()
}
