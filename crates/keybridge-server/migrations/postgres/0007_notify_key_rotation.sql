-- A terminal's rotated API key must stop working on every instance at once,
-- like a disabled terminal's: the write that rotates it stages the audit row
-- `terminal_key_rotated`, and this notifies it (`peers.rs` forgets the
-- terminal's cached key). The function of 0005_notify_at_commit, with that
-- one event added.

CREATE OR REPLACE FUNCTION keybridge_hub_notify() RETURNS trigger LANGUAGE plpgsql AS $$
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
