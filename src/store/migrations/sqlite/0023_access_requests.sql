-- Temporary access: a door (target at a connector) for a person, for a window, with a reason,
-- approved by someone other than who asked. Break-glass emergencies are rows of kind `emergency`:
-- in force at once for a short time, then reviewed by another approver. While active, the grant is
-- desired like a template's; at the window's end the scheduler expires it and the grant is revoked
-- unless policy grants it anyway. Rows are kept after they end, for the audit trail and the person's page.
CREATE TABLE access_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- temporary | emergency
    kind TEXT NOT NULL DEFAULT 'temporary',
    identity_key TEXT NOT NULL,
    connector TEXT NOT NULL,
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    starts_at BIGINT NOT NULL,
    ends_at BIGINT NOT NULL,
    -- requested | approved | active | expired | ended | rejected
    status TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    decided_by TEXT,
    decided_at BIGINT,
    -- Who ended it early, or `schedule` at its end.
    closed_by TEXT,
    closed_at BIGINT,
    -- An emergency opened by one operator must be reviewed by another before this instant.
    review_due_at BIGINT,
    reviewed_by TEXT,
    reviewed_at BIGINT,
    review TEXT
);
CREATE INDEX access_requests_person ON access_requests (identity_key, status);
CREATE INDEX access_requests_open ON access_requests (status, starts_at, ends_at);
CREATE INDEX access_requests_unreviewed ON access_requests (kind, reviewed_at, review_due_at);
