-- When a revoke used up its connector's attempts and went on retrying at the capped interval
-- (a revoke never dead-letters on an error that can heal); NULL while it is not stuck.
ALTER TABLE commands ADD COLUMN stuck_since BIGINT;
