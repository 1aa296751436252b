-- Revocations. `seq` is the cursor of the WatchRevocations stream. A row is
-- deleted once `covers_until` has passed: everything it covers has expired.
CREATE TABLE revocations (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT    NOT NULL,
    value         TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    operator      TEXT    NOT NULL,
    revoked_at    INTEGER NOT NULL,
    covers_until  INTEGER NOT NULL,
    identities    TEXT    NOT NULL DEFAULT '[]'  -- JSON; for kind owner
);
CREATE INDEX revocations_by_expiry ON revocations (covers_until);
