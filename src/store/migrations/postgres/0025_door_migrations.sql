-- A door moved from one connector to another (the plant room from mechanical keys to a smart lock),
-- door by door. From the moment it starts, every grant templates give for the old connector's
-- target is wanted at the new connector's instead: the new credential is issued to everyone
-- entitled and the old one revoked (a mechanical key gets a return task). It stays in force after
-- it closes (when the last old credential is gone), until the templates name the new connector.
CREATE TABLE door_migrations (
    id BIGSERIAL PRIMARY KEY,
    from_connector TEXT NOT NULL,
    from_target TEXT NOT NULL,
    to_connector TEXT NOT NULL,
    to_target TEXT NOT NULL,
    -- open | closed
    status TEXT NOT NULL,
    started_by TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    closed_at BIGINT
);
CREATE UNIQUE INDEX door_migrations_door ON door_migrations (from_connector, from_target);
