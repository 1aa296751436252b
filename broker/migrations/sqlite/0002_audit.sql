-- Append-only audit log. Each row holds the SHA-256 of the previous row's
-- hash and its own canonical form, so altering or deleting a row breaks the
-- chain that `credbroker audit verify` walks.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    at_ms       INTEGER NOT NULL,
    action      TEXT    NOT NULL,
    decision    TEXT    NOT NULL,
    actor       TEXT,
    peer        TEXT,
    identity    TEXT,
    env         TEXT,
    credential  TEXT,
    jti         TEXT,
    serial      TEXT,
    expires_at  INTEGER,
    reason      TEXT,
    detail      TEXT,
    evidence    TEXT,
    prev_hash   BLOB    NOT NULL,
    hash        BLOB    NOT NULL
);
CREATE INDEX audit_by_identity ON audit_log (identity, seq);
CREATE INDEX audit_by_jti ON audit_log (jti) WHERE jti IS NOT NULL;
CREATE INDEX audit_by_serial ON audit_log (serial) WHERE serial IS NOT NULL;
CREATE INDEX audit_by_time ON audit_log (at_ms);
CREATE INDEX audit_issued_by_expiry ON audit_log (expires_at) WHERE decision = 'issued';
