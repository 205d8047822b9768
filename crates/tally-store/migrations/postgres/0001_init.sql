-- Tally host database on PostgreSQL (fleet mode), schema version 1. One database per fleet:
-- every host of the fleet reads and writes these tables (X1).

-- R5: each pool's table capacity (twice the highest threshold requested; never shrinks). The
-- row is also the pool's lock: a host counting a request takes it FOR UPDATE, so hosts count
-- one pool one transaction at a time, in commit order.
CREATE TABLE pools (
    pool     uuid PRIMARY KEY,
    capacity integer NOT NULL
);

-- R4: the live CMID table of each pool, with the last time each was seen (Unix ms).
CREATE TABLE pool_entries (
    pool      uuid NOT NULL REFERENCES pools (pool),
    cmid      uuid NOT NULL,
    last_seen bigint NOT NULL,
    PRIMARY KEY (pool, cmid)
);

-- R6: every client served by any host of the fleet, for reports. Never consulted for counting.
CREATE TABLE registry (
    cmid          uuid PRIMARY KEY,
    machine_name  text NOT NULL,
    sku           uuid NOT NULL,
    pool          uuid NOT NULL,
    license_state smallint NOT NULL,
    first_seen    bigint NOT NULL,
    last_seen     bigint NOT NULL,
    last_result   bigint NOT NULL,
    last_count    integer NOT NULL,
    activated     boolean NOT NULL,
    requests      bigint NOT NULL,
    served_by     text NOT NULL         -- the host that answered the latest request
);
CREATE INDEX registry_last_seen ON registry (last_seen);
CREATE INDEX registry_machine ON registry (lower(machine_name), cmid);

-- R27: the fleet's event log; `host` says which host wrote each event.
CREATE TABLE events (
    id        bigserial PRIMARY KEY,
    at        bigint NOT NULL,          -- Unix ms
    event_id  integer NOT NULL,
    level     text NOT NULL,
    message   text NOT NULL,
    data      jsonb NOT NULL,
    host      text NOT NULL
);
CREATE INDEX events_at ON events (at);
CREATE INDEX events_event_id ON events (event_id, at);

-- Refused requests, counted per day, edition and result (never one row per machine): a flood of
-- hostile requests adds at most one row per (day, edition, result). Unknown editions are stored
-- under the nil UUID.
CREATE TABLE refusals (
    day      integer NOT NULL,
    sku      uuid NOT NULL,
    result   bigint NOT NULL,
    requests bigint NOT NULL,
    last_at  bigint NOT NULL,
    PRIMARY KEY (day, sku, result)
);
