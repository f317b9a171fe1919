-- The audit head follows the last record written: appending a record is one read of the head and
-- one insert, instead of also a second statement to move the head (every change of every person
-- appends records, so this is a round trip less on the hottest path). Appends are serialised by
-- the write lock, and records are only ever appended in sequence, so the head is always the
-- newest record.
CREATE TRIGGER audit_log_moves_the_head AFTER INSERT ON audit_log
BEGIN
    UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash WHERE id = 1;
END;
