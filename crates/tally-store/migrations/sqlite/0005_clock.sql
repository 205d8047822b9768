-- Host clock sanity (X5). `clock_marks` holds the last time a check trusted the host's clock
-- (`trusted`): retention and pulling future stamps back are judged against it, never against
-- times a clock that ran ahead may have written.
CREATE TABLE clock_marks (
    name TEXT PRIMARY KEY,
    at   INTEGER NOT NULL            -- Unix ms
) WITHOUT ROWID;
CREATE INDEX pool_entries_last_seen ON pool_entries (last_seen);
