-- Version 3: how each device signs. Existing devices are transaction-applet
-- cards (the only method before); PIV devices sign SHA-256(payload) in slot
-- 9C with no counter, so their last_counter stays 0.
ALTER TABLE devices ADD COLUMN signature_method TEXT NOT NULL DEFAULT 'transaction_applet'
    CHECK (signature_method IN ('transaction_applet', 'piv'));
