-- Audit you can take away: time and subject lookups for `audit list` and `audit export`, the
-- anchor retention leaves (the last pruned record's seq and hash, from which the stored chain
-- verifies), and one cursor per SIEM forwarding sink (the last seq the receiver accepted).
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_subject ON audit_log (subject, seq);

CREATE TABLE audit_anchor (
    id BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    pruned_at BIGINT
);
INSERT INTO audit_anchor (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_forward_cursors (
    sink TEXT PRIMARY KEY,
    seq BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
