-- Each tenant's suppression list: addresses not to send to, per channel,
-- in their normal form. A lifted entry stays (lifted_at_ms set) until the
-- retention purge, so every node's copy of the lists learns of the lift.
CREATE TABLE suppressions (
    tenant_id     TEXT NOT NULL,
    channel       TEXT NOT NULL,
    address       TEXT NOT NULL,
    reason        TEXT NOT NULL,
    detail        TEXT,
    source        TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    changed_at_ms BIGINT NOT NULL,
    lifted_at_ms  BIGINT,
    PRIMARY KEY (tenant_id, channel, address)
);
-- The listing, newest first per tenant.
CREATE INDEX suppressions_listed ON suppressions (tenant_id, created_at_ms);
-- The nodes' copies follow the changes in this order.
CREATE INDEX suppressions_changed ON suppressions (changed_at_ms, tenant_id, channel, address);
