-- Tally host database, schema version 2: the event log (R27).
CREATE TABLE events (
    id        INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,      -- Unix ms
    event_id  INTEGER NOT NULL,      -- 12290 activation request, 12293/12294 DNS, 1000+ Tally's own
    level     TEXT NOT NULL,         -- info | warning | error
    message   TEXT NOT NULL,
    data      TEXT NOT NULL          -- JSON object with the event's fields
);
CREATE INDEX events_at ON events (at);
CREATE INDEX events_event_id ON events (event_id, at);
