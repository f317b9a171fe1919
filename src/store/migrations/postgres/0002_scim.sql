-- SCIM resources as identity providers pushed them, per tenant. `raw` is the canonical JSON
-- representation (never a password: it is dropped on the way in). `version` feeds the ETag.
CREATE TABLE scim_resources (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    external_id TEXT,
    user_name TEXT,
    -- userName is unique per tenant and case-insensitive (RFC 7643 section 4.1.1)
    user_name_ci TEXT,
    display_name TEXT,
    active BIGINT,
    -- the correlation key of the person record this user produced, if any
    person_key TEXT,
    raw TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    modified_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE UNIQUE INDEX scim_resources_user_name ON scim_resources (tenant, resource_type, user_name_ci);
CREATE INDEX scim_resources_list ON scim_resources (tenant, resource_type, created_at);

-- Every attribute value of every resource, flattened (`emails.value`, `name.familyname`,
-- `members.value`), so filters run as SQL. `elem` numbers the elements of a multi-valued attribute,
-- so `emails[type eq "work" and value co "x"]` compares sub-attributes of one element. `val` is
-- lower-cased (SCIM attributes are case-insensitive unless caseExact); `num` holds numbers.
-- Group members are the rows with attr = 'members.value'.
CREATE TABLE scim_values (
    id BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    attr TEXT NOT NULL,
    elem BIGINT NOT NULL,
    val TEXT,
    num DOUBLE PRECISION
);
CREATE INDEX scim_values_lookup ON scim_values (tenant, attr, val);
CREATE INDEX scim_values_resource ON scim_values (tenant, resource_id);
