-- A terminal can be disabled (its API key revoked, say after a leak): from
-- then on the key authenticates nothing. The row stays, for its
-- transactions and the audit log.
ALTER TABLE terminals ADD COLUMN disabled_at INTEGER;
