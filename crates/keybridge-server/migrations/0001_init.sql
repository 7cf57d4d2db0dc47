-- KeyBridge schema, version 1. Portable SQL: TEXT/INTEGER/BLOB only, money as
-- INTEGER minor units (never REAL), times as INTEGER unix seconds.

CREATE TABLE accounts (
    id            TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    currency      TEXT NOT NULL,
    balance_minor INTEGER NOT NULL,
    system        INTEGER NOT NULL CHECK (system IN (0, 1)),
    created_at    INTEGER NOT NULL,
    -- Customer accounts may never run negative; issuance accounts may.
    CHECK (system = 1 OR balance_minor >= 0)
);

CREATE TABLE terminals (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    api_key_hash BLOB NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL
);

CREATE TABLE devices (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts (id),
    label           TEXT NOT NULL,
    public_key      BLOB NOT NULL,
    certificate     BLOB NOT NULL,
    credential_hash BLOB NOT NULL UNIQUE,
    status          TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    last_counter    INTEGER NOT NULL CHECK (last_counter >= 0),
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX devices_by_account ON devices (account_id, status);

CREATE TABLE transactions (
    -- Insertion order, for "newest first" listings without relying on clock ties.
    seq             INTEGER PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    terminal_id     TEXT NOT NULL REFERENCES terminals (id),
    idempotency_key TEXT NOT NULL,
    request_hash    BLOB NOT NULL,
    payer           TEXT NOT NULL REFERENCES accounts (id),
    payee           TEXT NOT NULL REFERENCES accounts (id),
    payee_name      TEXT NOT NULL,
    amount_minor    INTEGER NOT NULL CHECK (amount_minor > 0),
    currency        TEXT NOT NULL,
    order_id        TEXT NOT NULL,
    description     TEXT NOT NULL,
    payload         BLOB NOT NULL,
    status          TEXT NOT NULL
        CHECK (status IN ('pending', 'settled', 'rejected', 'expired', 'failed')),
    reason          TEXT,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    -- Idempotency: one transaction per terminal and client-chosen key, race-safe.
    UNIQUE (terminal_id, idempotency_key)
);
CREATE INDEX transactions_by_status_expiry ON transactions (status, expires_at);
CREATE INDEX transactions_by_payer ON transactions (payer, status);

-- One row = one double-entry transfer: debit and credit are equal by construction.
CREATE TABLE transfers (
    id             INTEGER PRIMARY KEY,
    -- At most one transfer per transaction (NULL for opening balances).
    transaction_id TEXT UNIQUE REFERENCES transactions (id),
    kind           TEXT NOT NULL CHECK (kind IN ('opening', 'payment')),
    debit_account  TEXT NOT NULL REFERENCES accounts (id),
    credit_account TEXT NOT NULL REFERENCES accounts (id),
    amount_minor   INTEGER NOT NULL CHECK (amount_minor > 0),
    currency       TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    CHECK (debit_account <> credit_account)
);

-- Append-only, hash-chained: hash = SHA-256(prev_hash ‖ seq ‖ at ‖ fields).
CREATE TABLE audit_log (
    seq            INTEGER PRIMARY KEY,
    at             INTEGER NOT NULL,
    transaction_id TEXT,
    event          TEXT NOT NULL,
    detail         TEXT NOT NULL,
    prev_hash      BLOB NOT NULL,
    hash           BLOB NOT NULL
);
