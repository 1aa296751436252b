-- The change feed: every write that brokers cache in memory (identities,
-- revocations, keys, operators) adds a row here in the same transaction,
-- so brokers sharing a store can follow each other. `seq` is assigned in
-- commit order. Rows older than a day are purged by the leader.
CREATE TABLE changes (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    kind   TEXT    NOT NULL,
    key    TEXT    NOT NULL,
    at_ms  INTEGER NOT NULL
);
CREATE INDEX changes_by_time ON changes (at_ms);
