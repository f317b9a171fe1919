-- Deriving an identity reads that person's records from every source (`source_records_of`) on each
-- change: the primary key (source, key) cannot serve a lookup by key alone, which scanned the whole
-- table once per person and made an initial load quadratic.
CREATE INDEX source_records_key ON source_records (key);
