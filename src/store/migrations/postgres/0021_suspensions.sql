-- Operator suspensions (a lost phone, an investigation): while one is active the person's grants at
-- the connectors it covers are revoked and stay revoked whatever the feeds say, until an operator
-- resumes them or the person leaves. Rows are kept after they end, for the audit trail.
CREATE TABLE suspensions (
    id BIGSERIAL PRIMARY KEY,
    identity_key TEXT NOT NULL,
    -- JSON array of connector names; NULL covers every connector.
    connectors TEXT,
    reason TEXT NOT NULL,
    suspended_by TEXT NOT NULL,
    suspended_at BIGINT NOT NULL,
    ended_at BIGINT,
    ended_by TEXT,
    -- resumed | left
    end_cause TEXT
);
CREATE INDEX suspensions_active ON suspensions (identity_key, ended_at);
