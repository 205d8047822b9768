-- Tally authority database, schema version 3: the transparency log (X8).

-- One row per leaf of the RFC 9162 Merkle tree, indexes dense from 0. Rows are only ever
-- inserted; an entry is kind + time + the exact signed object (tally_log::LogEntry).
CREATE TABLE log_entries (
    idx          INTEGER PRIMARY KEY,          -- leaf index
    kind         INTEGER NOT NULL,             -- tally_log::EntryKind code
    at           INTEGER NOT NULL,             -- Unix ms
    object       BLOB NOT NULL,                -- the signed object as delivered
    object_hash  BLOB NOT NULL,                -- SHA-256(object): find an object's entry
    leaf_hash    BLOB NOT NULL                 -- SHA-256(0x00 || leaf input)
);
CREATE INDEX log_entries_object ON log_entries (object_hash);

-- The log's size: the lock every append takes (so indexes are dense and never reused, even
-- if the last row were deleted).
CREATE TABLE log_state (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    size  INTEGER NOT NULL
);
INSERT INTO log_state (id, size) VALUES (1, 0);
