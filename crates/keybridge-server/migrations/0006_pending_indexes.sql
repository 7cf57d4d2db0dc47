-- Indexes over pending rows only.
--
-- The sweeper (`status = 'pending' AND expires_at <= ?`), a relay's resync
-- (`payer = ? AND status = 'pending'`) and the webhook worker
-- (`state = 'pending' AND next_attempt_at <= ?`) only ever look for pending
-- rows. Full indexes on (status, ...) held an entry for every transaction ever
-- made, and ending a transaction moved its entry (a delete and an insert in
-- another page). Partial indexes hold only what is pending: a few pages that
-- stay hot, and ending a transaction only deletes its entry. Measured with
-- `keybridge bench`: fewer pages written per group commit (docs/performance.md).
--
-- SQLite uses a partial index only when the query's WHERE names the same
-- literal ('pending'), which every query above does.

DROP INDEX transactions_by_status_expiry;
CREATE INDEX transactions_pending_by_expiry ON transactions (expires_at)
    WHERE status = 'pending';

DROP INDEX transactions_by_payer;
CREATE INDEX transactions_pending_by_payer ON transactions (payer, expires_at)
    WHERE status = 'pending';

DROP INDEX webhook_deliveries_due;
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
