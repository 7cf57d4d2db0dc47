-- KeyBridge schema for PostgreSQL, version 1: the same tables, columns and
-- rules as the SQLite schema after its migration 7 (../0001_init.sql to
-- ../0007_answer_digest.sql), in PostgreSQL's own types. Money as BIGINT
-- minor units (never floating point), times as BIGINT unix seconds, hashes
-- and keys as BYTEA. Later changes get a numbered file here and one beside
-- the SQLite migrations.

CREATE TABLE accounts (
    id            TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    currency      TEXT NOT NULL,
    balance_minor BIGINT NOT NULL,
    system        BOOLEAN NOT NULL,
    created_at    BIGINT NOT NULL,
    -- Customer accounts may never run negative; issuance accounts may.
    CHECK (system OR balance_minor >= 0)
);

CREATE TABLE terminals (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    api_key_hash BYTEA NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL
);

CREATE TABLE devices (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts (id),
    label           TEXT NOT NULL,
    public_key      BYTEA NOT NULL,
    certificate     BYTEA NOT NULL,
    credential_hash BYTEA NOT NULL UNIQUE,
    status          TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    last_counter    BIGINT NOT NULL CHECK (last_counter >= 0),
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    method          TEXT NOT NULL DEFAULT 'transaction_applet'
        CHECK (method IN ('transaction_applet', 'piv', 'ocra')),
    -- Set once when the certificate (or OCRA secret) is revoked.
    revoked_at      BIGINT,
    -- OCRA: the suite and the secret sealed with the server master key.
    ocra_suite      TEXT,
    ocra_secret     BYTEA
);
CREATE INDEX devices_by_account ON devices (account_id, status);

CREATE TABLE transactions (
    -- Insertion order, for "newest first" listings without relying on clock ties.
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    terminal_id     TEXT NOT NULL REFERENCES terminals (id),
    idempotency_key TEXT NOT NULL,
    request_hash    BYTEA NOT NULL,
    payer           TEXT NOT NULL REFERENCES accounts (id),
    payee           TEXT NOT NULL REFERENCES accounts (id),
    payee_name      TEXT NOT NULL,
    amount_minor    BIGINT NOT NULL CHECK (amount_minor > 0),
    currency        TEXT NOT NULL,
    order_id        TEXT NOT NULL,
    description     TEXT NOT NULL,
    payload         BYTEA NOT NULL,
    status          TEXT NOT NULL
        CHECK (status IN ('pending', 'settled', 'rejected', 'expired', 'failed')),
    reason          TEXT,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    -- Which answer ended it (`verify::answer_digest`); NULL when none did.
    answer_sha256   BYTEA CHECK (answer_sha256 IS NULL OR length(answer_sha256) = 32),
    -- Idempotency: one transaction per terminal and client-chosen key, race-safe.
    UNIQUE (terminal_id, idempotency_key)
);
-- Indexes over pending rows only (see ../0006_pending_indexes.sql).
CREATE INDEX transactions_pending_by_expiry ON transactions (expires_at)
    WHERE status = 'pending';
CREATE INDEX transactions_pending_by_payer ON transactions (payer, expires_at)
    WHERE status = 'pending';
CREATE INDEX transactions_by_terminal_payer ON transactions (terminal_id, payer, seq);

-- One row = one double-entry transfer: debit and credit are equal by construction.
CREATE TABLE transfers (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- At most one transfer per transaction (NULL for opening balances).
    transaction_id TEXT UNIQUE REFERENCES transactions (id),
    kind           TEXT NOT NULL CHECK (kind IN ('opening', 'payment')),
    debit_account  TEXT NOT NULL REFERENCES accounts (id),
    credit_account TEXT NOT NULL REFERENCES accounts (id),
    amount_minor   BIGINT NOT NULL CHECK (amount_minor > 0),
    currency       TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    CHECK (debit_account <> credit_account)
);

-- Append-only, hash-chained: hash = SHA-256(prev_hash ‖ seq ‖ at ‖ fields).
CREATE TABLE audit_log (
    seq            BIGINT PRIMARY KEY,
    at             BIGINT NOT NULL,
    transaction_id TEXT,
    event          TEXT NOT NULL,
    detail         TEXT NOT NULL,
    prev_hash      BYTEA NOT NULL,
    hash           BYTEA NOT NULL
);

-- The ledger and the audit log are append-only: refuse edits at the
-- database, not only in code (TRUNCATE included, which row triggers miss).
CREATE FUNCTION keybridge_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION keybridge_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION keybridge_append_only();
CREATE TRIGGER transfers_append_only BEFORE UPDATE OR DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION keybridge_append_only();
CREATE TRIGGER transfers_no_truncate BEFORE TRUNCATE ON transfers
    FOR EACH STATEMENT EXECUTE FUNCTION keybridge_append_only();

-- Webhooks: a terminal's callback URL and an outbox of outcome events
-- (see ../0005_webhooks.sql).
CREATE TABLE webhooks (
    terminal_id TEXT PRIMARY KEY REFERENCES terminals (id),
    url         TEXT NOT NULL,
    -- The HMAC key must be readable to sign with it; never returned after
    -- registration and never logged.
    secret      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        TEXT NOT NULL UNIQUE,
    terminal_id     TEXT NOT NULL REFERENCES terminals (id),
    transaction_id  TEXT NOT NULL UNIQUE REFERENCES transactions (id),
    url             TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT NOT NULL CHECK (attempts >= 0),
    next_attempt_at BIGINT NOT NULL,
    last_status     BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT
);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';

-- The outbox row is written in the same database transaction that ends the
-- transaction, so an outcome is never settled without its event queued.
CREATE FUNCTION keybridge_webhook_outcome_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries
        (event_id, terminal_id, transaction_id, url, state, attempts,
         next_attempt_at, created_at)
    SELECT 'evt_' || replace(gen_random_uuid()::text, '-', ''), w.terminal_id, NEW.id,
           w.url, 'pending', 0, NEW.updated_at, NEW.updated_at
    FROM webhooks AS w
    WHERE w.terminal_id = NEW.terminal_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_outcome_event
    AFTER UPDATE OF status ON transactions
    FOR EACH ROW WHEN (OLD.status = 'pending' AND NEW.status <> 'pending')
    EXECUTE FUNCTION keybridge_webhook_outcome_event();
