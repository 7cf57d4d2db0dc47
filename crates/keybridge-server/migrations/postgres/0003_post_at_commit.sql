-- Balances are posted from transfers when the write commits.
--
-- Every payment to a merchant changes the merchant's account row, and a
-- changed row stays locked until its write commits, so payments to one
-- merchant follow one another: how long each holds the row bounds that
-- merchant's payments per second, on any number of instances. Before this
-- migration a settle locked both accounts first and held them across two
-- more round trips to the server and its commit; sampled during a bench run,
-- more than half the database's connections were waiting for that lock.
--
-- Now a write only inserts the transfer. A deferred constraint trigger runs
-- at its COMMIT and moves both balances, the lower account id first, so the
-- rows are held only from there to the end of the commit (the WAL flush).
-- Account rows are locked nowhere else, always last and in one order, so
-- two payments in opposite directions cannot deadlock.
--
-- The payer's funds were checked by the write on a read without a lock; the
-- `CHECK (system OR balance_minor >= 0)` on `accounts` checks them again here.
-- If another payment from the same payer committed in between and left too
-- little, the commit fails with check_violation and the store runs the whole
-- write again, which then ends the transaction `failed/insufficient_funds`.
-- A balance past BIGINT fails the commit with numeric_value_out_of_range.

CREATE FUNCTION keybridge_post_transfer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.debit_account < NEW.credit_account THEN
        UPDATE accounts SET balance_minor = balance_minor - NEW.amount_minor
            WHERE id = NEW.debit_account;
        UPDATE accounts SET balance_minor = balance_minor + NEW.amount_minor
            WHERE id = NEW.credit_account;
    ELSE
        UPDATE accounts SET balance_minor = balance_minor + NEW.amount_minor
            WHERE id = NEW.credit_account;
        UPDATE accounts SET balance_minor = balance_minor - NEW.amount_minor
            WHERE id = NEW.debit_account;
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER transfers_post AFTER INSERT ON transfers
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION keybridge_post_transfer();
