-- A reconciliation's hold records the policy fingerprint it was made under, so an approver's
-- rejection stands for that policy: the same policy does not ask again at every reconciliation,
-- and a changed policy asks afresh.
ALTER TABLE held_changes ADD COLUMN fingerprint TEXT;
