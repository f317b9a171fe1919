-- latchkey state, SQLite flavour. Times are microseconds since the Unix epoch (BIGINT) on both databases.
CREATE TABLE identities (
    key TEXT PRIMARY KEY,
    lifecycle TEXT NOT NULL,
    lifecycle_since BIGINT NOT NULL,
    attrs TEXT NOT NULL,
    site TEXT,
    next_change_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX identities_next_change ON identities (next_change_at);

CREATE TABLE source_records (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    hash TEXT NOT NULL,
    record TEXT NOT NULL,
    first_seen_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL,
    disappeared_at BIGINT,
    PRIMARY KEY (source, key)
);

CREATE TABLE source_checkpoints (
    source TEXT PRIMARY KEY,
    checkpoint TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    batch TEXT NOT NULL,
    location TEXT NOT NULL,
    record_key TEXT,
    field TEXT NOT NULL,
    reason TEXT NOT NULL,
    raw TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (source, batch, location, field)
);

CREATE TABLE held_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    decided_by TEXT,
    decided_at BIGINT
);
CREATE INDEX held_changes_status ON held_changes (status, source, key);

CREATE TABLE grants (
    identity_key TEXT NOT NULL,
    connector TEXT NOT NULL,
    target TEXT NOT NULL,
    desired TEXT NOT NULL,
    observed TEXT NOT NULL,
    generation BIGINT NOT NULL,
    vendor_ref TEXT,
    template TEXT NOT NULL,
    credential TEXT NOT NULL,
    time_window TEXT,
    valid_until BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (identity_key, connector, target)
);
CREATE INDEX grants_target ON grants (connector, target);

CREATE TABLE vendor_people (
    connector TEXT NOT NULL,
    identity_key TEXT NOT NULL,
    vendor_ref TEXT NOT NULL,
    PRIMARY KEY (connector, identity_key)
);

CREATE TABLE commands (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    idem_key TEXT NOT NULL UNIQUE,
    connector TEXT NOT NULL,
    action TEXT NOT NULL,
    identity_key TEXT NOT NULL,
    target TEXT NOT NULL,
    generation BIGINT NOT NULL,
    priority BIGINT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    cause TEXT NOT NULL,
    trigger_at BIGINT NOT NULL,
    detected_at BIGINT NOT NULL,
    enqueued_at BIGINT NOT NULL,
    first_attempt_at BIGINT,
    dispatched_at BIGINT,
    confirmed_at BIGINT,
    confirm_deadline BIGINT,
    last_error TEXT
);
CREATE INDEX commands_claim ON commands (connector, status, priority, next_attempt_at, id);
CREATE INDEX commands_grant ON commands (connector, identity_key, target, status);

CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

CREATE TABLE job_runs (
    job TEXT PRIMARY KEY,
    last_run_at BIGINT NOT NULL
);
