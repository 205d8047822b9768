-- One CMID, one installation (X6). A version-2 request carries the installation's sequence
-- number and hardware digest; the registry keeps the highest number per CMID and how often
-- another installation presented the CMID (`clones`), so a copy of a disk image is reported.
ALTER TABLE registry ADD COLUMN sequence INTEGER;
ALTER TABLE registry ADD COLUMN hardware_digest BLOB;
ALTER TABLE registry ADD COLUMN clones INTEGER NOT NULL DEFAULT 0;
