-- Tally host database, schema version 3 (issue 12: storage per request is bounded).
-- Refused requests (unknown edition, pool mismatch, edition not covered) are counted here per
-- day, edition and result instead of one registry row and one event per machine: a flood of
-- hostile requests adds at most one row per (day, edition, result). The edition of an unknown
-- edition request is stored as the nil UUID: a value the requester chose is never a key here.
CREATE TABLE refusals (
    day      INTEGER NOT NULL,     -- Unix day (ms / 86400000)
    sku      BLOB NOT NULL,
    result   INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    last_at  INTEGER NOT NULL,     -- Unix ms of the latest one
    PRIMARY KEY (day, sku, result)
) WITHOUT ROWID;
