-- Claiming walks the open commands of a lane in priority order and stops at the first one that is
-- due. A partial index holds only open commands, so finished ones (most of the table, over time) are
-- never scanned.
CREATE INDEX commands_open ON commands (connector, priority, id) WHERE status IN ('pending', 'confirming', 'inflight');
