-- Hub events between instances are sent by the write that causes them, as
-- part of its transaction: PostgreSQL delivers a NOTIFY when, and only when,
-- the transaction that issued it commits.
--
-- Before this, an instance sent each event itself after its write had
-- committed. An instance that died in between (crash test
-- `payments_survive_each_of_two_postgres_servers_killed_in_turn`) lost the
-- event for good: a transaction created through it was never pushed to the
-- payer's relay on another instance, and the payment hung until it expired.
--
-- Every write that causes an event stages an audit row in the same
-- transaction (0002_audit_staging), so the notification is derived from that
-- row. As before, it names what changed, never how: hearers read the store
-- (see `peers.rs`). `from` is the writing connection's `application_name`,
-- which each instance sets to its own id, so an instance skips its own events
-- (it delivered them to its subscribers already).

CREATE FUNCTION keybridge_hub_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event   jsonb;
    payload text;
BEGIN
    IF NEW.event = 'transaction_created' THEN
        event := jsonb_build_object('kind', 'created', 'id', NEW.transaction_id);
    ELSIF NEW.event IN ('transaction_settled', 'transaction_rejected',
                        'transaction_expired', 'transaction_failed') THEN
        event := jsonb_build_object('kind', 'ended', 'id', NEW.transaction_id);
    ELSIF NEW.event IN ('device_disabled', 'device_revoked') THEN
        event := jsonb_build_object('kind', 'device_disabled',
                                    'device_id', NEW.detail::jsonb ->> 'device');
    ELSIF NEW.event = 'terminal_disabled' THEN
        event := jsonb_build_object('kind', 'terminal_disabled',
                                    'terminal_id', NEW.detail::jsonb ->> 'terminal');
    ELSE
        RETURN NULL;
    END IF;
    payload := jsonb_build_object('from', current_setting('application_name'),
                                  'event', event)::text;
    -- NOTIFY refuses 8000 bytes or more, which would fail the write itself;
    -- ids are short, and hearers that miss an event read the store anyway.
    IF octet_length(payload) < 8000 THEN
        PERFORM pg_notify('keybridge_hub', payload);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER audit_staging_notify AFTER INSERT ON audit_staging
    FOR EACH ROW EXECUTE FUNCTION keybridge_hub_notify();
