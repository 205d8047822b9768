-- Tally host database, schema version 1.

-- R5: each pool's table capacity (twice the highest threshold requested; never shrinks).
CREATE TABLE pool_capacity (
    pool     BLOB PRIMARY KEY,
    capacity INTEGER NOT NULL
) WITHOUT ROWID;

-- R4: the live CMID table of each pool, with the last time each was seen (Unix ms).
CREATE TABLE pool_entries (
    pool      BLOB NOT NULL,
    cmid      BLOB NOT NULL,
    last_seen INTEGER NOT NULL,
    PRIMARY KEY (pool, cmid)
) WITHOUT ROWID;

-- R6: every client ever served, for reports. Never consulted for counting.
CREATE TABLE registry (
    cmid          BLOB PRIMARY KEY,
    machine_name  TEXT NOT NULL,
    sku           BLOB NOT NULL,
    pool          BLOB NOT NULL,
    license_state INTEGER NOT NULL,
    first_seen    INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL,
    last_result   INTEGER NOT NULL,
    last_count    INTEGER NOT NULL,
    activated     INTEGER NOT NULL,
    requests      INTEGER NOT NULL
);
CREATE INDEX registry_last_seen ON registry (last_seen);
