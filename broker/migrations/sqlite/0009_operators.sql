-- Named operators: one row per client certificate the broker issued to an
-- operator, bound by its serial. A name may hold one unrevoked,
-- unexpired certificate at a time (checked by the broker); a revoked
-- certificate stays refused even after its name is given a new one.
CREATE TABLE operators (
    serial         TEXT    PRIMARY KEY,
    name           TEXT    NOT NULL,
    role           TEXT    NOT NULL CHECK (role IN ('admin', 'operator', 'auditor')),
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    created_by     TEXT    NOT NULL,
    revoked_at     INTEGER,
    revoked_by     TEXT,
    revoke_reason  TEXT
);
CREATE INDEX operators_by_name ON operators (name);
