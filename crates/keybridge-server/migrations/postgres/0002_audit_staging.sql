-- Audit rows are chained after their write commits, not while it runs.
--
-- The audit log is one hash chain: each row's hash needs the row before it,
-- so appends to it happen one at a time. When each write appended its own
-- rows, every write of every instance passed through that point in turn and
-- held it until its commit was flushed: commits could not share a WAL flush,
-- and on the project's VM more than half the database's connections were
-- found waiting for it.
--
-- Now a write inserts its audit rows here, in the same transaction as the
-- change they record, so they commit (or roll back) with it. The sealer
-- (`store/postgres/sealer.rs`) moves committed rows into `audit_log` in
-- batches, in the order of `id`, computing each hash as `store::audit` does,
-- under the advisory lock the chain's appends take; it deletes what it
-- chained in the same transaction. Reads of the audit log seal first, so
-- they see every audit row committed before them.
--
-- Until it is sealed (about 50 ms, the sealer's period), a row is protected
-- by the database's permissions alone, not yet by the chain.

CREATE TABLE audit_staging (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             BIGINT NOT NULL CHECK (at >= 0),
    transaction_id TEXT,
    event          TEXT NOT NULL,
    detail         TEXT NOT NULL
);
