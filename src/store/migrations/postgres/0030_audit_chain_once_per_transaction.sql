-- A transaction's deferred audit trigger (0013) fires once per pending record, and the first
-- firing chains them all. The others used to return after looking for pending records: a scan of
-- audit_pending, which between two vacuums still holds every record chained (deleted) since, so a
-- transaction of a thousand records scanned a growing table a thousand times, and a feed of
-- 100,000 people slowed down quadratically. The first firing now marks its transaction (a setting
-- local to it) and the others return at the mark without reading anything. The chain itself is
-- computed as before.
CREATE OR REPLACE FUNCTION audit_chain_pending() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r RECORD;
    head_seq BIGINT;
    head_hash TEXT;
    z BYTEA := '\x00'::bytea;
BEGIN
    -- One firing per pending row: the first chains them all and marks the transaction, the
    -- others return at the mark.
    IF current_setting('latchkey.audit_chained', true) = 'yes' THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('latchkey.audit_chained', 'yes', true);
    SELECT seq, hash INTO head_seq, head_hash FROM audit_head WHERE id = 1 FOR UPDATE;
    FOR r IN SELECT * FROM audit_pending ORDER BY id LOOP
        head_seq := head_seq + 1;
        INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, hash)
        VALUES (head_seq, r.at, r.actor, r.action, r.subject, r.details, head_hash,
            encode(sha256(convert_to(head_hash, 'UTF8')
                || z || convert_to(head_seq::text, 'UTF8')
                || z || convert_to(r.at::text, 'UTF8')
                || z || convert_to(r.actor, 'UTF8')
                || z || convert_to(r.action, 'UTF8')
                || z || convert_to(r.subject, 'UTF8')
                || z || convert_to(r.details, 'UTF8')), 'hex'))
        RETURNING hash INTO head_hash;
        DELETE FROM audit_pending WHERE id = r.id;
    END LOOP;
    UPDATE audit_head SET seq = head_seq, hash = head_hash WHERE id = 1;
    RETURN NULL;
END;
$$;
