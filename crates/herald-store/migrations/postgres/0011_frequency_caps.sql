-- Each notification counted against a tenant's frequency cap: one row per
-- (tenant, recipient, category) and acceptance time. Rows older than the
-- cap's window are deleted as the key is counted again. Writers on every
-- node serialize on the key with a transaction-scoped advisory lock.
CREATE TABLE cap_events (
    tenant_id       TEXT NOT NULL,
    recipient_id    TEXT NOT NULL,
    category        TEXT NOT NULL,
    at_ms           BIGINT NOT NULL
);
CREATE INDEX cap_events_by_key ON cap_events (tenant_id, recipient_id, category, at_ms);
