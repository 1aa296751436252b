-- Audit retention: the newest retention cut. Every audit entry up to `seq`
-- was exported (to `export`, under the export directory) and may be
-- deleted; `head` is that entry's chain hash and `signature` the audit
-- key's signature over the cut (see audit/checkpoint.rs, kind "cut"), so
-- `audit verify` checks the remaining log from here, and rows deleted
-- without a cut the broker signed are still reported as missing.
CREATE TABLE audit_cut (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    seq       INTEGER NOT NULL,
    head      BLOB    NOT NULL,
    at_ms     INTEGER NOT NULL,
    signature BLOB    NOT NULL,
    export    TEXT    NOT NULL
);
