-- What a detected anomaly does to an identity besides the audit record,
-- the metric and the flag: 'alert' (nothing more) or 'disable'.
ALTER TABLE identities ADD COLUMN on_anomaly TEXT NOT NULL DEFAULT 'alert';
