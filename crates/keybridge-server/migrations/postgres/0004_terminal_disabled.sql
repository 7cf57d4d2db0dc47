-- A terminal can be disabled (its API key revoked): see ../0008_terminal_disabled.sql.
ALTER TABLE terminals ADD COLUMN disabled_at BIGINT;
