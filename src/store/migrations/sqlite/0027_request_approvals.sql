-- Approvals recorded on a temporary access request at a door whose risk tier needs more than one
-- approver (`[tiers.NAME] approvals = 2`): one row per person; the request is approved when
-- enough distinct people other than the requester have approved it.
CREATE TABLE request_approvals (
    request_id BIGINT NOT NULL,
    -- The person behind the approver's actor (`operator:NAME`, or the actor itself).
    approver TEXT NOT NULL,
    actor TEXT NOT NULL,
    approved_at BIGINT NOT NULL,
    PRIMARY KEY (request_id, approver)
);
