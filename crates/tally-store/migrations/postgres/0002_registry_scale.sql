-- Tally fleet database, schema version 2 (issue 14: a registry of 10 million machines).
-- A search is a prefix of the lower-cased machine name, answered from an index in the "C"
-- collation (byte order), as is the order by machine name; first-seen order has its index.
DROP INDEX registry_machine;
CREATE INDEX registry_machine ON registry ((lower(machine_name) COLLATE "C"), cmid);
CREATE INDEX registry_first_seen ON registry (first_seen, cmid);

-- The bench edition's machines (tally_core::bench): the registry's columns and indexes, so a
-- bench request costs what a real one does, in a table no listing, count or report reads.
CREATE TABLE bench_registry (LIKE registry INCLUDING ALL);
