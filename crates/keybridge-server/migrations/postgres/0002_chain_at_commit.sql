-- The audit chain is extended when a write commits, not while it runs.
--
-- Before this migration a write took the chain's advisory lock at its first
-- audit row and held it, across three round trips to the server, until its
-- commit: every write of every instance passed through that lock one at a
-- time, each holding it for as long as its server took to answer.
--
-- Now a write inserts its audit rows into `audit_staging`. A deferred
-- constraint trigger runs at the write's COMMIT, once per staged row in the
-- order they were inserted: it takes the lock, reads the chain's last row,
-- appends the row to `audit_log` with its hash and removes it from staging.
-- The lock is held from there to the end of the commit only (the WAL flush),
-- with no round trip to the client inside it. A write that rolls back never
-- fires the trigger and leaves nothing.
--
-- The next writer's read of the last row comes after the holder's commit:
-- the trigger's statements each take a fresh snapshot (READ COMMITTED, the
-- default), and a commit is visible before its locks are released. Under a
-- stricter isolation level the read could miss the last row; the primary key
-- on `seq` then refuses the duplicate and the commit fails, so the chain
-- cannot fork.
--
-- The hash is the one `store::audit::row_hash` computes, which verifies it:
-- SHA-256(prev_hash ‖ seq ‖ at ‖ len‖transaction_id ‖ len‖event ‖ len‖detail),
-- integers as big-endian 8 bytes (int8send), texts as UTF-8 with their byte
-- length before them, a missing transaction id as the empty text.

CREATE TABLE audit_staging (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             BIGINT NOT NULL CHECK (at >= 0),
    transaction_id TEXT,
    event          TEXT NOT NULL,
    detail         TEXT NOT NULL
);

CREATE FUNCTION keybridge_chain_audit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    prev      BYTEA;
    next_seq  BIGINT;
    tx        BYTEA := convert_to(coalesce(NEW.transaction_id, ''), 'UTF8');
    event     BYTEA := convert_to(NEW.event, 'UTF8');
    detail    BYTEA := convert_to(NEW.detail, 'UTF8');
BEGIN
    -- 'KB' then 1: the constant AUDIT_LOCK in store/postgres.rs.
    PERFORM pg_advisory_xact_lock(1262616577);
    SELECT seq + 1, hash INTO next_seq, prev FROM audit_log ORDER BY seq DESC LIMIT 1;
    IF NOT FOUND THEN
        next_seq := 1;
        prev := decode(repeat('00', 32), 'hex');
    END IF;
    INSERT INTO audit_log (seq, at, transaction_id, event, detail, prev_hash, hash)
    VALUES (
        next_seq, NEW.at, NEW.transaction_id, NEW.event, NEW.detail, prev,
        sha256(prev || int8send(next_seq) || int8send(NEW.at)
            || int8send(length(tx)::BIGINT) || tx
            || int8send(length(event)::BIGINT) || event
            || int8send(length(detail)::BIGINT) || detail)
    );
    DELETE FROM audit_staging WHERE id = NEW.id;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER audit_staging_chain AFTER INSERT ON audit_staging
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION keybridge_chain_audit();
