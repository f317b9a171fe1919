-- Rows of one element of one resource (a group member's value, display and type), so a member
-- added to or removed from a large group touches only its own rows.
CREATE INDEX scim_values_element ON scim_values (tenant, resource_id, elem, attr);
