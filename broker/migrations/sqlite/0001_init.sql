-- Keys: private keys sealed under the KEK; certificates for CA keys.
CREATE TABLE key_material (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    env         TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    cert_der    BLOB,
    sealed_key  BLOB    NOT NULL
);
CREATE INDEX key_material_by_env_kind ON key_material (env, kind, id);

-- Identities (registration entries).
CREATE TABLE identities (
    env              TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    spiffe_id        TEXT    NOT NULL UNIQUE,
    owner            TEXT    NOT NULL,
    purpose          TEXT    NOT NULL,
    selectors        TEXT    NOT NULL,   -- JSON [{key, value}]
    audiences        TEXT    NOT NULL,   -- JSON [string]
    scopes           TEXT    NOT NULL,   -- JSON [string]
    jwt_ttl_seconds  INTEGER NOT NULL,
    x509_ttl_seconds INTEGER NOT NULL,
    expires_at       INTEGER,
    enabled          INTEGER NOT NULL,
    retired_at       INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    last_issued_at   INTEGER,
    last_seen_at     INTEGER,
    PRIMARY KEY (env, name)
);

-- Join tokens: only the SHA-256 of the secret is kept.
CREATE TABLE join_tokens (
    token_hash  BLOB    PRIMARY KEY,
    env         TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    uses_left   INTEGER NOT NULL,
    FOREIGN KEY (env, name) REFERENCES identities (env, name)
);
