-- Key lifecycle: each environment's CA and JWT key rotate. A key is
-- prepared (published, not signing) from created_at, signs from
-- activates_at until its successor activates, and stays published after
-- that until what it signed has expired. Rows written before rotation
-- existed read as active since their creation and never expiring.
ALTER TABLE key_material ADD COLUMN activates_at INTEGER;
ALTER TABLE key_material ADD COLUMN not_after INTEGER;
ALTER TABLE key_material ADD COLUMN retired_at INTEGER;
ALTER TABLE key_material ADD COLUMN unpublish_at INTEGER;
ALTER TABLE key_material ADD COLUMN retire_reason TEXT;
-- The key's public id (a JWT key's kid, a CA's key identifier), so keys
-- that left the published sets are still named without unsealing them.
ALTER TABLE key_material ADD COLUMN key_id TEXT;

-- Per environment, the version of its published key set
-- (`spiffe_sequence`): raised whenever the set or the signing key changes
-- (`fingerprint` names both), and only then: a restart keeps it.
CREATE TABLE key_sequence (
    env          TEXT    PRIMARY KEY,
    seq          INTEGER NOT NULL,
    fingerprint  TEXT    NOT NULL
);
