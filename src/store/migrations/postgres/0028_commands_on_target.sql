-- Commands by target: whether more writes to a target are queued, and every change on a target
-- waiting for its read-back, so one vendor listing confirms them all.
CREATE INDEX commands_on_target ON commands (connector, target, status, priority, next_attempt_at);
