-- Issue 5: PKI and OCRA devices.
--
-- `method`: how the device confirms (`piv` from issue 3, `ocra` from issue 5;
-- both landed together, so version 3 was never released and is absent).
ALTER TABLE devices ADD COLUMN method TEXT NOT NULL DEFAULT 'transaction_applet'
    CHECK (method IN ('transaction_applet', 'piv', 'ocra'));
-- Set once when the device's certificate (or OCRA secret) is revoked. The
-- status column keeps its own meaning (the relay's credential is disabled or
-- not): a revoked device may still be heard, and is answered
-- `certificate_revoked`. Rebuilding the table to widen the status CHECK would
-- fight other migrations touching `devices`.
ALTER TABLE devices ADD COLUMN revoked_at INTEGER;
-- OCRA devices: the suite and the secret sealed with the server master key
-- (12-byte nonce ‖ AES-256-GCM ciphertext ‖ tag, AAD = device id ‖ suite).
ALTER TABLE devices ADD COLUMN ocra_suite TEXT;
ALTER TABLE devices ADD COLUMN ocra_secret BLOB;
