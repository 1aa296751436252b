-- Request-time context: peer networks an identity's credential calls may
-- come from (JSON [string] of CIDRs; empty = any).
ALTER TABLE identities ADD COLUMN allow_cidrs TEXT NOT NULL DEFAULT '[]';

-- Single-use OIDC tokens: each jti is remembered until its exp, per attestor.
CREATE TABLE used_jtis (
    attestor    TEXT    NOT NULL,
    jti         TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (attestor, jti)
);
CREATE INDEX used_jtis_by_expiry ON used_jtis (expires_at);

-- AWS instances and the key (SHA-256 of the SubjectPublicKeyInfo, hex) each
-- first attested with.
CREATE TABLE attested_instances (
    attestor     TEXT    NOT NULL,
    instance_id  TEXT    NOT NULL,
    key_sha256   TEXT    NOT NULL,
    first_seen   INTEGER NOT NULL,
    PRIMARY KEY (attestor, instance_id)
);
