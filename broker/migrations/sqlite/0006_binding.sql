-- Sender-constrained JWTs: an identity whose JWTs carry `cnf.x5t#S256` and
-- are refused unless presented over mTLS by that certificate (RFC 8705).
ALTER TABLE identities ADD COLUMN require_binding INTEGER NOT NULL DEFAULT 0;
