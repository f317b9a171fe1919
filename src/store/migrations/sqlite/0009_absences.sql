-- People missing from a snapshot feed who are not yet leavers: absence is a weaker signal than a
-- termination, so a person becomes a leaver only once missing from `feeds` consecutive feeds (and
-- for the configured time). A person back in a feed loses their row. Times are microseconds since
-- the Unix epoch.
CREATE TABLE source_absences (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    since BIGINT NOT NULL,
    feeds BIGINT NOT NULL,
    PRIMARY KEY (source, key)
);
