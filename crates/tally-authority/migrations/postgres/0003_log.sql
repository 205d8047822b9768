-- Tally authority database on PostgreSQL, schema version 3: the transparency log (X8).

-- One row per leaf of the RFC 9162 Merkle tree, indexes dense from 0. Rows are only ever
-- inserted; an entry is kind + time + the exact signed object (tally_log::LogEntry).
CREATE TABLE authority_log_entries (
    idx          BIGINT PRIMARY KEY CHECK (idx >= 0),
    kind         SMALLINT NOT NULL,
    at           BIGINT NOT NULL,             -- Unix ms
    object       BYTEA NOT NULL,              -- the signed object as delivered
    object_hash  BYTEA NOT NULL,              -- SHA-256(object): find an object's entry
    leaf_hash    BYTEA NOT NULL               -- SHA-256(0x00 || leaf input)
);
CREATE INDEX authority_log_entries_object ON authority_log_entries (object_hash);

-- The log's size. Every append updates this one row first (`UPDATE ... RETURNING`), which
-- locks it until the appending transaction ends: appends from every authority process are
-- serialised, so indexes are dense and never duplicated or reused.
CREATE TABLE authority_log_state (
    id    SMALLINT PRIMARY KEY CHECK (id = 1),
    size  BIGINT NOT NULL
);
INSERT INTO authority_log_state (id, size) VALUES (1, 0);
