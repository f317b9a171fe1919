-- Commands by target: whether more writes to a target are queued, and every change on a target
-- waiting for its read-back, so one vendor listing confirms them all.
CREATE INDEX commands_on_target ON commands (connector, target, status, priority, next_attempt_at);
-- Pending commands in claim order: a claim finds the next one without stepping past the changes
-- waiting for a read-back.
CREATE INDEX commands_pending ON commands (connector, priority, id) WHERE status = 'pending';
-- Changes waiting for a read-back by due time: a claim finds the ones due without stepping past
-- those gathered for a later one.
CREATE INDEX commands_confirming_due ON commands (connector, next_attempt_at) WHERE status = 'confirming';
