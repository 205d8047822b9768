-- Tally authority database, schema version 1.

-- Every key the authority issued (R21-R23, R25).
CREATE TABLE keys (
    serial            INTEGER PRIMARY KEY,
    kind              TEXT NOT NULL,           -- 'host' | 'mak'
    key_text          TEXT NOT NULL UNIQUE,
    key_group         TEXT,                    -- host keys
    generation        INTEGER,                 -- host keys
    max_hosts         INTEGER NOT NULL,        -- R23: 6 distinct hosts (MAK: its budget)
    max_activations   INTEGER NOT NULL,        -- R23: 1 + 9 reactivations per host
    created_at        INTEGER NOT NULL,
    note              TEXT NOT NULL DEFAULT '',
    revoked_at        INTEGER,
    revoke_reason     TEXT
);

-- One row per (key, machine): how often that machine activated with the key.
CREATE TABLE activations (
    serial       INTEGER NOT NULL REFERENCES keys (serial),
    hardware     TEXT NOT NULL,
    detail       TEXT NOT NULL,                -- host public key (hex) or MAK client CMID
    count        INTEGER NOT NULL,
    first_at     INTEGER NOT NULL,
    last_at      INTEGER NOT NULL,
    PRIMARY KEY (serial, hardware)
);

-- Operator actions, kept for good: issue, exception, revoke.
CREATE TABLE audit (
    id      INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    serial  INTEGER,
    detail  TEXT NOT NULL
);
