-- PostgreSQL chains audit records at commit through audit_pending (see its 0013). SQLite has one
-- writer at a time, so it extends the chain in place and leaves this table empty; it exists so
-- both schemas stay alike.
CREATE TABLE audit_pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    details TEXT NOT NULL
);
