-- Tally fleet database, schema version 3: host clock sanity (X5). `clock_marks` holds the last
-- time a check trusted the clock the fleet counts on (the database's): retention and pulling
-- future stamps back are judged against it.
CREATE TABLE clock_marks (
    name text PRIMARY KEY,
    at   bigint NOT NULL             -- Unix ms
);
CREATE INDEX pool_entries_last_seen ON pool_entries (last_seen);
