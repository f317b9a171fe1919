-- Leases between replicas (DESIGN.md invariant 14): which replica follows each source, runs each
-- scheduled job and owns each connector's lane. Times are the database's own clock (microseconds
-- since the Unix epoch), so replicas whose clocks disagree still agree on who holds what.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    -- The holding replica's incarnation (`instance-pid@host`, as command lease owners).
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    acquired_at BIGINT NOT NULL,
    renewed_at BIGINT NOT NULL
);

-- One command per grant in flight, held by the database rather than by the claim's NOT EXISTS
-- check, which two concurrent claims on PostgreSQL can both pass. Rows an older version left in
-- flight twice for one grant go back to the queue first (all but the oldest).
UPDATE commands SET status = CASE WHEN dispatched_at IS NULL THEN 'pending' ELSE 'confirming' END,
    lease_owner = NULL, lease_expires_at = NULL
WHERE status = 'inflight' AND id NOT IN (
    SELECT MIN(id) FROM commands WHERE status = 'inflight' GROUP BY connector, identity_key, target);
CREATE UNIQUE INDEX commands_one_inflight_per_grant ON commands (connector, identity_key, target)
    WHERE status = 'inflight';
