-- Access reviews: a campaign lists the current holders of a door, a tier's doors, a connector's
-- doors or a manager's reports' doors, each with why they hold it (a template, a request, an
-- emergency); reviewers certify or revoke each item, and at the deadline the undecided items
-- follow the campaign's policy (revoked, or escalated to whoever runs the campaign's tier).
CREATE TABLE review_campaigns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    -- target | tier | connector | manager
    scope_kind TEXT NOT NULL,
    scope_value TEXT NOT NULL,
    -- What happens to undecided items at the deadline: revoke | escalate
    on_deadline TEXT NOT NULL,
    -- open | escalated | closed
    status TEXT NOT NULL,
    started_by TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    deadline_at BIGINT NOT NULL,
    closed_at BIGINT
);
CREATE INDEX review_campaigns_open ON review_campaigns (status, deadline_at);
CREATE INDEX review_campaigns_scope ON review_campaigns (scope_kind, scope_value, started_at);

-- One holder of one door in a campaign, as it stood when the campaign started.
CREATE TABLE review_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id BIGINT NOT NULL REFERENCES review_campaigns (id),
    identity_key TEXT NOT NULL,
    connector TEXT NOT NULL,
    target TEXT NOT NULL,
    -- Why the person holds it: the template's name, or request:ID
    template TEXT NOT NULL,
    -- template | request | emergency
    basis TEXT NOT NULL,
    -- NULL (undecided) | certified | revoked | escalated
    decision TEXT,
    decided_by TEXT,
    decided_at BIGINT,
    note TEXT
);
CREATE UNIQUE INDEX review_items_holder ON review_items (campaign_id, identity_key, connector, target);

-- A door a review took from a person whom a template still gives it: withheld from what policy
-- wants until an operator lifts it (a temporary request, approved anew, still gives the door).
CREATE TABLE review_withdrawals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    identity_key TEXT NOT NULL,
    connector TEXT NOT NULL,
    target TEXT NOT NULL,
    item_id BIGINT NOT NULL,
    withdrawn_by TEXT NOT NULL,
    withdrawn_at BIGINT NOT NULL,
    lifted_by TEXT,
    lifted_at BIGINT
);
CREATE INDEX review_withdrawals_person ON review_withdrawals (identity_key, lifted_at);
