-- Tally authority database on PostgreSQL, schema version 1 (the same tables as the SQLite
-- schema; serials and counters are BIGINT because they are unsigned 32-bit values).

-- Every key the authority issued (R21-R23, R25).
CREATE TABLE authority_keys (
    serial            BIGINT PRIMARY KEY CHECK (serial BETWEEN 0 AND 4294967295),
    kind              TEXT NOT NULL CHECK (kind IN ('host', 'mak')),
    key_text          TEXT NOT NULL UNIQUE,
    key_group         TEXT,                    -- host keys
    generation        BIGINT,                  -- host keys
    max_hosts         BIGINT NOT NULL,         -- R23: 6 distinct hosts (MAK: its budget)
    max_activations   BIGINT NOT NULL,         -- R23: 1 + 9 reactivations per host
    created_at        BIGINT NOT NULL,         -- Unix ms
    note              TEXT NOT NULL DEFAULT '',
    revoked_at        BIGINT,
    revoke_reason     TEXT
);

-- One row per (key, machine): how often that machine activated with the key. Writers of a
-- key's rows first lock the key's row in authority_keys (SELECT ... FOR UPDATE).
CREATE TABLE authority_activations (
    serial       BIGINT NOT NULL REFERENCES authority_keys (serial),
    hardware     TEXT NOT NULL,
    detail       TEXT NOT NULL,                -- host public key (hex) or MAK client CMID
    count        BIGINT NOT NULL,
    first_at     BIGINT NOT NULL,
    last_at      BIGINT NOT NULL,
    PRIMARY KEY (serial, hardware)
);

-- Operator actions, kept for good: issue, exception, revoke.
CREATE TABLE authority_audit (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    serial  BIGINT,
    detail  TEXT NOT NULL
);
