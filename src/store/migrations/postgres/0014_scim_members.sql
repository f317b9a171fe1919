-- A group's members, one row each, so adding or removing one member of a group of 20,000 writes
-- that member's row and not the group's whole document. `member_id` is lower case (what member
-- lookups compare); `element` is the member as the identity provider sent it (JSON); `seq` keeps
-- the order members were added in. The group's `raw` no longer carries `members`.
CREATE TABLE scim_members (
    seq BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL,
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    element TEXT NOT NULL
);
CREATE UNIQUE INDEX scim_members_group ON scim_members (tenant, group_id, member_id);
CREATE INDEX scim_members_member ON scim_members (tenant, member_id);

INSERT INTO scim_members (tenant, group_id, member_id, element)
SELECT r.tenant, r.id, LOWER(m.elem ->> 'value'), m.elem::text
FROM scim_resources r
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(r.raw::jsonb -> 'members') = 'array' THEN r.raw::jsonb -> 'members'
         ELSE '[]'::jsonb END) WITH ORDINALITY AS m(elem, n)
WHERE r.resource_type = 'Group' AND jsonb_typeof(m.elem -> 'value') = 'string'
ORDER BY r.tenant, r.id, m.n
ON CONFLICT DO NOTHING;

UPDATE scim_resources SET raw = (raw::jsonb - 'members')::text
WHERE resource_type = 'Group' AND (raw::jsonb -> 'members') IS NOT NULL;
