-- Mechanical key tasks (hand-over and return, recorded by people), circuit breaker states and drift
-- findings. Times are microseconds since the Unix epoch, as everywhere.
CREATE TABLE key_tasks (
    id BIGSERIAL PRIMARY KEY,
    connector TEXT NOT NULL,
    identity_key TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    due_at BIGINT,
    done_at BIGINT,
    done_by TEXT,
    overdue_alerted_at BIGINT
);
CREATE INDEX key_tasks_grant ON key_tasks (connector, identity_key, target, kind, status);
CREATE INDEX key_tasks_open ON key_tasks (status, due_at);

CREATE TABLE breaker_states (
    connector TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    since BIGINT NOT NULL,
    last_error TEXT
);

CREATE TABLE drift_findings (
    id BIGSERIAL PRIMARY KEY,
    connector TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    vendor_ref TEXT,
    first_seen_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    resolution TEXT,
    resolved_at BIGINT
);
CREATE INDEX drift_findings_open ON drift_findings (connector, target, kind, subject, resolved_at);
