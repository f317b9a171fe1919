-- Who holds a door is asked by the door's name alone (who-has, the console, the API): the index on
-- (connector, target) cannot serve that, and a large site's door has thousands of holders.
CREATE INDEX grants_by_target ON grants (target, connector, identity_key);
