-- A group's members, one row each, so adding or removing one member of a group of 20,000 writes
-- that member's row and not the group's whole document. `member_id` is lower case (what member
-- lookups compare); `element` is the member as the identity provider sent it (JSON); `seq` keeps
-- the order members were added in. The group's `raw` no longer carries `members`.
CREATE TABLE scim_members (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    element TEXT NOT NULL
);
CREATE UNIQUE INDEX scim_members_group ON scim_members (tenant, group_id, member_id);
CREATE INDEX scim_members_member ON scim_members (tenant, member_id);

INSERT OR IGNORE INTO scim_members (tenant, group_id, member_id, element)
SELECT r.tenant, r.id, LOWER(json_extract(m.value, '$.value')), m.value
FROM scim_resources r, json_each(r.raw, '$.members') m
WHERE r.resource_type = 'Group' AND json_type(m.value, '$.value') = 'text'
ORDER BY r.tenant, r.id, m.key;

UPDATE scim_resources SET raw = json_remove(raw, '$.members')
WHERE resource_type = 'Group' AND json_type(raw, '$.members') IS NOT NULL;
