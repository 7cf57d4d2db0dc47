-- Webhooks: a terminal's callback URL and an outbox of outcome events.
--
-- The outbox row is written by a trigger in the same database transaction
-- that ends the transaction (pending -> final), so an outcome can never be
-- settled without its event being queued, even if the process dies right
-- after the commit. A delivery worker reads the outbox and keeps its state.

CREATE TABLE webhooks (
    terminal_id TEXT PRIMARY KEY REFERENCES terminals (id),
    url         TEXT NOT NULL,
    -- The HMAC key must be readable to sign with it (a hash would not do);
    -- it is never returned after registration and never logged.
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE webhook_deliveries (
    seq             INTEGER PRIMARY KEY,
    -- What the receiver deduplicates on.
    event_id        TEXT NOT NULL UNIQUE,
    terminal_id     TEXT NOT NULL REFERENCES terminals (id),
    -- One outcome event per transaction: a transaction ends once.
    transaction_id  TEXT NOT NULL UNIQUE REFERENCES transactions (id),
    url             TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL CHECK (attempts >= 0),
    next_attempt_at INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    delivered_at    INTEGER
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);

CREATE TRIGGER webhook_outcome_event
AFTER UPDATE OF status ON transactions
WHEN OLD.status = 'pending' AND NEW.status <> 'pending'
BEGIN
    INSERT INTO webhook_deliveries
        (event_id, terminal_id, transaction_id, url, state, attempts,
         next_attempt_at, created_at)
    SELECT 'evt_' || lower(hex(randomblob(16))), w.terminal_id, NEW.id, w.url,
           'pending', 0, NEW.updated_at, NEW.updated_at
    FROM webhooks AS w
    WHERE w.terminal_id = NEW.terminal_id;
END;

-- The terminal-scoped account page lists a terminal's transactions of one payer.
CREATE INDEX transactions_by_terminal_payer ON transactions (terminal_id, payer, seq);
