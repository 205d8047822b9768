-- Tally authority database on PostgreSQL, schema version 2: taking trust back (X7).

-- Every host certificate issued since version 2, so a reactivation can supersede the
-- certificates it replaces. Written under the key's row lock.
CREATE TABLE authority_certificates (
    fingerprint    TEXT PRIMARY KEY,           -- SHA-256 of the certificate, hex
    serial         BIGINT NOT NULL REFERENCES authority_keys (serial),
    hardware       TEXT NOT NULL,
    host_key       TEXT NOT NULL,
    issued_at      BIGINT NOT NULL,
    superseded_at  BIGINT
);
CREATE INDEX authority_certificates_by_machine ON authority_certificates (serial, hardware);

-- The revocation list: one row per revoked subject. `id` grows with every change (assigned
-- as MAX(id) + 1 under an advisory lock, so ids are dense and commit in order across
-- processes) and is the serial of the first list carrying the row.
CREATE TABLE authority_revocations (
    id            BIGINT PRIMARY KEY CHECK (id BETWEEN 1 AND 4294967295),
    subject_kind  TEXT NOT NULL CHECK (subject_kind IN ('certificate', 'host_key', 'mak')),
    subject       TEXT NOT NULL,
    reason        TEXT NOT NULL,
    revoked_at    BIGINT NOT NULL,
    UNIQUE (subject_kind, subject)
);

INSERT INTO authority_revocations (id, subject_kind, subject, reason, revoked_at)
    SELECT row_number() OVER (ORDER BY revoked_at, serial),
           CASE kind WHEN 'mak' THEN 'mak' ELSE 'host_key' END, serial::text,
           'unspecified', revoked_at
    FROM authority_keys WHERE revoked_at IS NOT NULL;
