-- Electronic key cabinets: who holds which cabinet key right now, kept from the cabinet's
-- key-out / key-return / overdue event feed (its cursor is a source checkpoint named
-- `cabinet:<connector>`). A returned key's row is deleted. Times are microseconds since the Unix epoch.
CREATE TABLE cabinet_holdings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    connector TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_group TEXT,
    identity_key TEXT NOT NULL,
    taken_at BIGINT NOT NULL,
    overdue_at BIGINT,
    leaver_alerted_at BIGINT
);
CREATE UNIQUE INDEX cabinet_holdings_key ON cabinet_holdings (connector, key_id);
CREATE INDEX cabinet_holdings_person ON cabinet_holdings (identity_key);
