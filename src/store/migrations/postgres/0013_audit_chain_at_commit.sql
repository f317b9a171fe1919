-- The audit chain is extended at commit, not mid-transaction. A transaction writes its audit
-- records into audit_pending (no shared row touched); a deferred trigger, run at commit after every
-- other statement, takes the audit_head row and chains this transaction's records in order. The
-- head is therefore always the last lock a writer takes, and its holder waits on nothing else, so
-- concurrent writers queue on it briefly but never deadlock through it.
CREATE TABLE audit_pending (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    details TEXT NOT NULL
);

-- Must match audit::record_hash: SHA-256 of the previous hash and the fields, each field preceded
-- by a zero byte, as lowercase hex.
CREATE FUNCTION audit_chain_pending() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r RECORD;
    head_seq BIGINT;
    head_hash TEXT;
    z BYTEA := '\x00'::bytea;
BEGIN
    -- One firing per pending row: the first chains them all, the others find nothing left.
    IF NOT EXISTS (SELECT 1 FROM audit_pending) THEN
        RETURN NULL;
    END IF;
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

CREATE CONSTRAINT TRIGGER audit_chain_at_commit
    AFTER INSERT ON audit_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION audit_chain_pending();
