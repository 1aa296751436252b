-- Audit retention: the newest retention cut (see
-- migrations/sqlite/0012_audit_retention.sql).
CREATE TABLE audit_cut (
    id        BIGINT PRIMARY KEY CHECK (id = 1),
    seq       BIGINT NOT NULL,
    head      BYTEA  NOT NULL,
    at_ms     BIGINT NOT NULL,
    signature BYTEA  NOT NULL,
    export    TEXT   NOT NULL
);
