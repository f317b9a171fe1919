-- Which source caused each command (a bounded label: `hr`, `scim:okta`, `schedule`, `approval`), so
-- latency can be broken down by source, and the W3C traceparent of the change that enqueued it, so
-- the dispatcher continues the change's trace when it delivers the command later.
ALTER TABLE commands ADD COLUMN source TEXT NOT NULL DEFAULT 'unknown';
ALTER TABLE commands ADD COLUMN traceparent TEXT;
