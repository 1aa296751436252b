-- Node agents: an identity may name the node identity ("env/name") whose
-- agent serves it. NULL for identities that attest themselves.
ALTER TABLE identities ADD COLUMN parent TEXT;
CREATE INDEX identities_by_parent ON identities (parent) WHERE parent IS NOT NULL;
