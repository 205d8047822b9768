-- Tally authority database, schema version 2: taking trust back (X7).

-- Every host certificate issued since version 2, so a reactivation can supersede the
-- certificates it replaces.
CREATE TABLE certificates (
    fingerprint    TEXT PRIMARY KEY,           -- SHA-256 of the certificate, hex
    serial         INTEGER NOT NULL REFERENCES keys (serial),
    hardware       TEXT NOT NULL,              -- the hardware id the host claimed, hex
    host_key       TEXT NOT NULL,              -- the certified host public key, hex
    issued_at      INTEGER NOT NULL,
    superseded_at  INTEGER
);
CREATE INDEX certificates_by_machine ON certificates (serial, hardware);

-- The revocation list: one row per revoked subject. `id` grows with every change and is the
-- serial of the first list carrying the row; a list's serial is its largest id.
CREATE TABLE revocations (
    id            INTEGER PRIMARY KEY,
    subject_kind  TEXT NOT NULL,                -- 'certificate' | 'host_key' | 'mak'
    subject       TEXT NOT NULL,                -- fingerprint (hex) or serial
    reason        TEXT NOT NULL,                -- a reason code (tally_proto::revocation::Reason)
    revoked_at    INTEGER NOT NULL,
    UNIQUE (subject_kind, subject)
);

-- Keys revoked before version 2 go on the list.
INSERT INTO revocations (subject_kind, subject, reason, revoked_at)
    SELECT CASE kind WHEN 'mak' THEN 'mak' ELSE 'host_key' END, CAST(serial AS TEXT),
           'unspecified', revoked_at
    FROM keys WHERE revoked_at IS NOT NULL ORDER BY revoked_at, serial;
