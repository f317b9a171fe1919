-- Who caused a held change (`os:alice` for a command an operator ran, `source:hr` or `reconcile` for
-- the daemon's own work), so dual control can refuse an approval by the same person.
ALTER TABLE held_changes ADD COLUMN requested_by TEXT;
