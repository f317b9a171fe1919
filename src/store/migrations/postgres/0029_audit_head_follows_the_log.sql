-- Nothing to change on PostgreSQL: records are chained at commit (migration 0013). SQLite's
-- migration of the same number moves its audit head with each record by a trigger; the two
-- dialects keep the same migration numbers.
SELECT 1;
