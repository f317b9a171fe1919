-- Web console sign-ins. The cookie carries a random token; only its SHA-256 is kept here, so a
-- copy of the database signs nobody in. A row lives until it expires or its operator signs out.
CREATE TABLE console_sessions (
    token_sha256 TEXT PRIMARY KEY,
    -- How the audit log names the operator: `oidc:NAME` or `operator:NAME`.
    actor TEXT NOT NULL,
    display_name TEXT NOT NULL,
    -- viewer | desk | approver | admin, as at sign-in.
    role TEXT NOT NULL,
    -- oidc | token
    via TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
