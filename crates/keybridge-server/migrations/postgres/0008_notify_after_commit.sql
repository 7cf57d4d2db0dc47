-- Transaction events are no longer notified inside the write that causes
-- them; the instance that wrote sends them right after its commit, and every
-- instance reads the sealed audit log for those it did not hear (`peers.rs`).
--
-- Why: PostgreSQL serialises the commits of all transactions that NOTIFY.
-- A notifying transaction takes one database-wide lock at commit and holds it
-- until its commit record is flushed, so no two such commits share a WAL
-- flush. Every payment made two (its creation and its end): sampled during a
-- bench run, backends waited on that lock (`Lock:object`) about as often as on
-- the merchant's row, and with this trigger not notifying transaction events
-- the bench confirmed about 35 % more payments a second
-- (docs/performance-history.md, "Notes after the commit").
--
-- The rare events a security decision rests on (a device disabled or
-- revoked, a terminal disabled, a terminal key rotated) still notify at their
-- commit: they must reach every instance at once or never be lost, and they
-- are too rare for the lock to matter. This is the function of
-- 0007_notify_key_rotation without the transaction events.

CREATE OR REPLACE FUNCTION keybridge_hub_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event   jsonb;
    payload text;
BEGIN
    IF NEW.event IN ('device_disabled', 'device_revoked') THEN
        event := jsonb_build_object('kind', 'device_disabled',
                                    'device_id', NEW.detail::jsonb ->> 'device');
    ELSIF NEW.event = 'terminal_disabled' THEN
        event := jsonb_build_object('kind', 'terminal_disabled',
                                    'terminal_id', NEW.detail::jsonb ->> 'terminal');
    ELSIF NEW.event = 'terminal_key_rotated' THEN
        event := jsonb_build_object('kind', 'terminal_key_rotated',
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
