-- LDAP sources: which directory entry (by its entryUUID) is which person. RFC 4533 present and
-- delete messages name an entry only by its UUID, so this is how a deletion or a move out of scope
-- becomes a leaver.
CREATE TABLE ldap_entries (
    source TEXT NOT NULL,
    entry_uuid TEXT NOT NULL,
    dn TEXT NOT NULL,
    record_key TEXT,
    PRIMARY KEY (source, entry_uuid)
);
