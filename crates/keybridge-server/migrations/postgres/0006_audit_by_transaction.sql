-- A transaction's own audit rows, for an operator looking into it
-- (`GET /v1/admin/transactions/{id}`): without an index, finding them read
-- the whole log. Partial: rows about accounts, devices or terminals name no
-- transaction. `seq` in the key serves `ORDER BY seq` without a sort.
CREATE INDEX audit_log_by_transaction ON audit_log (transaction_id, seq)
    WHERE transaction_id IS NOT NULL;
