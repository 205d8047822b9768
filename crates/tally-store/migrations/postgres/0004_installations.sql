-- One CMID, one installation (X6): see the SQLite migration of the same name.
ALTER TABLE registry ADD COLUMN sequence bigint;
ALTER TABLE registry ADD COLUMN hardware_digest bytea;
ALTER TABLE registry ADD COLUMN clones integer NOT NULL DEFAULT 0;
