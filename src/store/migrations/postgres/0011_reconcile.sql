-- What the last full reconciliation was planned against: a fingerprint of everything that decides
-- desired state (templates, target maps, mappings, time zones, thresholds), so a change to any of
-- them re-evaluates every identity at the next start or tick.
CREATE TABLE policy_state (
    name TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    reconciled_at BIGINT NOT NULL
);
