-- A transaction's own audit rows, for an operator looking into it
-- (`GET /v1/admin/transactions/{id}`): without an index, finding them read
-- the whole log. Partial: rows about accounts, devices or terminals name no
-- transaction. SQLite uses it for `transaction_id = ?`, which implies the
-- index's `IS NOT NULL`; entries of one transaction sort by rowid (`seq`),
-- so `ORDER BY seq` needs no sort. Transaction ids begin with their
-- creation time, so new entries land on the index's last pages: about one
-- more page per group commit (docs/performance.md).
CREATE INDEX audit_log_by_transaction ON audit_log (transaction_id)
    WHERE transaction_id IS NOT NULL;
