-- One identity's audit history as a chain through the log instead of the
-- (identity, seq) index: with a million identities, every entry landed on
-- a random page of that index and SQLite's WAL writes whole pages, so the
-- index cost each entry a page write of its own (see
-- src/store/sqlite/identity_chain.rs).
--
-- `identity_prev` is the seq of the same identity's previous entry. It is
-- not part of the entry's hash: like an index, it only finds entries, and
-- a query checks every entry it reaches is the identity's.
ALTER TABLE audit_log ADD COLUMN identity_prev INTEGER;
-- Existing entries are linked once, through the index this step drops.
UPDATE audit_log SET identity_prev =
    (SELECT max(older.seq) FROM audit_log AS older
      WHERE older.identity = audit_log.identity AND older.seq < audit_log.seq)
 WHERE identity IS NOT NULL;
DROP INDEX audit_by_identity;
-- Each identity's newest entry (its head), keyed by the first 8 bytes of
-- the SHA-256 of `env/name` (little-endian), as of
-- `audit_heads_through.seq`: a broker loads these and reads the log after
-- that seq instead of all of it. Zero here makes the first broker to open
-- the store read the whole log.
CREATE TABLE audit_identity_heads (
    key INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE audit_heads_through (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
INSERT INTO audit_heads_through (id, seq) VALUES (1, 0);
