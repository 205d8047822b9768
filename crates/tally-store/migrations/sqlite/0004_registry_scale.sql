-- Tally host database, schema version 4 (issue 14: a registry of 10 million machines).
-- Every order and search the registry offers is answered from an index, so a page, a search
-- or a count takes milliseconds at any size (figures in ARCHITECTURE.md "Registry at scale").
-- A search is a case-insensitive prefix of the machine name (ASCII case folding).
CREATE INDEX registry_name ON registry (machine_name COLLATE NOCASE);
CREATE INDEX registry_first_seen ON registry (first_seen);

-- The bench edition's machines (tally_core::bench): the same columns and indexes as the
-- registry, so a bench request costs what a real one does, in a table no listing, count or
-- compliance report reads. Retention prunes it like the registry; the registry cap counts it.
CREATE TABLE bench_registry (
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
CREATE INDEX bench_registry_last_seen ON bench_registry (last_seen);
CREATE INDEX bench_registry_name ON bench_registry (machine_name COLLATE NOCASE);
CREATE INDEX bench_registry_first_seen ON bench_registry (first_seen);
