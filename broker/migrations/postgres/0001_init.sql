-- The PostgreSQL schema: the same tables and columns as the SQLite one
-- (migrations/sqlite, all steps applied), so one row decoder serves both.
-- Integers are BIGINT (unix seconds or ms; booleans as 0/1), bytes BYTEA,
-- lists JSON text.

CREATE TABLE key_material (
    id            BIGSERIAL PRIMARY KEY,
    env           TEXT   NOT NULL,
    kind          TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    cert_der      BYTEA,
    sealed_key    BYTEA  NOT NULL,
    activates_at  BIGINT,
    not_after     BIGINT,
    retired_at    BIGINT,
    unpublish_at  BIGINT,
    retire_reason TEXT,
    key_id        TEXT
);
CREATE INDEX key_material_by_env_kind ON key_material (env, kind, id);

CREATE TABLE key_sequence (
    env          TEXT   PRIMARY KEY,
    seq          BIGINT NOT NULL,
    fingerprint  TEXT   NOT NULL
);

CREATE TABLE identities (
    env              TEXT   NOT NULL,
    name             TEXT   NOT NULL,
    spiffe_id        TEXT   NOT NULL UNIQUE,
    owner            TEXT   NOT NULL,
    purpose          TEXT   NOT NULL,
    selectors        TEXT   NOT NULL,
    audiences        TEXT   NOT NULL,
    scopes           TEXT   NOT NULL,
    jwt_ttl_seconds  BIGINT NOT NULL,
    x509_ttl_seconds BIGINT NOT NULL,
    expires_at       BIGINT,
    enabled          BIGINT NOT NULL,
    retired_at       BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    last_issued_at   BIGINT,
    last_seen_at     BIGINT,
    parent           TEXT,
    allow_cidrs      TEXT   NOT NULL DEFAULT '[]',
    require_binding  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (env, name)
);
CREATE INDEX identities_by_parent ON identities (parent) WHERE parent IS NOT NULL;

CREATE TABLE join_tokens (
    token_hash  BYTEA  PRIMARY KEY,
    env         TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    uses_left   BIGINT NOT NULL,
    FOREIGN KEY (env, name) REFERENCES identities (env, name)
);

-- Append-only, hash-chained; `seq` is assigned by whichever broker holds
-- the audit lock, right after the newest row (see the store's append).
CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    action      TEXT   NOT NULL,
    decision    TEXT   NOT NULL,
    actor       TEXT,
    peer        TEXT,
    identity    TEXT,
    env         TEXT,
    credential  TEXT,
    jti         TEXT,
    serial      TEXT,
    expires_at  BIGINT,
    reason      TEXT,
    detail      TEXT,
    evidence    TEXT,
    prev_hash   BYTEA  NOT NULL,
    hash        BYTEA  NOT NULL
);
CREATE INDEX audit_by_identity ON audit_log (identity, seq);
CREATE INDEX audit_by_jti ON audit_log (jti) WHERE jti IS NOT NULL;
CREATE INDEX audit_by_serial ON audit_log (serial) WHERE serial IS NOT NULL;
CREATE INDEX audit_by_time ON audit_log (at_ms);
CREATE INDEX audit_issued_by_expiry ON audit_log (expires_at) WHERE decision = 'issued';

CREATE TABLE revocations (
    seq           BIGSERIAL PRIMARY KEY,
    kind          TEXT   NOT NULL,
    value         TEXT   NOT NULL,
    reason        TEXT   NOT NULL,
    operator      TEXT   NOT NULL,
    revoked_at    BIGINT NOT NULL,
    covers_until  BIGINT NOT NULL,
    identities    TEXT   NOT NULL DEFAULT '[]'
);
CREATE INDEX revocations_by_expiry ON revocations (covers_until);

CREATE TABLE used_jtis (
    attestor    TEXT   NOT NULL,
    jti         TEXT   NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (attestor, jti)
);
CREATE INDEX used_jtis_by_expiry ON used_jtis (expires_at);

CREATE TABLE attested_instances (
    attestor     TEXT   NOT NULL,
    instance_id  TEXT   NOT NULL,
    key_sha256   TEXT   NOT NULL,
    first_seen   BIGINT NOT NULL,
    PRIMARY KEY (attestor, instance_id)
);

CREATE TABLE operators (
    serial         TEXT   PRIMARY KEY,
    name           TEXT   NOT NULL,
    role           TEXT   NOT NULL CHECK (role IN ('admin', 'operator', 'auditor')),
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    created_by     TEXT   NOT NULL,
    revoked_at     BIGINT,
    revoked_by     TEXT,
    revoke_reason  TEXT
);
CREATE INDEX operators_by_name ON operators (name);

-- The change feed (see migrations/sqlite/0010_changes.sql); written under
-- the change lock, so `seq` order is commit order.
CREATE TABLE changes (
    seq    BIGSERIAL PRIMARY KEY,
    kind   TEXT   NOT NULL,
    key    TEXT   NOT NULL,
    at_ms  BIGINT NOT NULL
);
CREATE INDEX changes_by_time ON changes (at_ms);

CREATE TABLE readiness_probe (
    id     BIGINT PRIMARY KEY CHECK (id = 1),
    at_ms  BIGINT NOT NULL
);
