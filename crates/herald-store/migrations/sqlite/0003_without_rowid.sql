-- Deliveries and idempotency keys become WITHOUT ROWID tables: clustered on
-- their primary key, so an insert writes one b-tree instead of two (the
-- rowid table and the key's index) and a lookup by id reads one. Their rows
-- are small; notifications (whose payload can be large) stay as they are.
-- docs/benchmarks.md has the measurements.

CREATE TABLE deliveries_clustered (
    id                BLOB PRIMARY KEY,
    notification_id   BLOB NOT NULL,
    channel           TEXT NOT NULL,
    target            INTEGER NOT NULL,
    priority          INTEGER NOT NULL,
    state             TEXT NOT NULL,
    due_at_ms         INTEGER NOT NULL,
    lease_token       INTEGER,
    attempts          INTEGER NOT NULL DEFAULT 0,
    provider          TEXT,
    vendor_message_id TEXT,
    last_error        TEXT,
    sent_at_ms        INTEGER,
    updated_at_ms     INTEGER NOT NULL,
    pinned_provider   TEXT,
    calling           TEXT,
    in_doubt          INTEGER NOT NULL DEFAULT 0,
    expires_at_ms     INTEGER
) WITHOUT ROWID;

INSERT INTO deliveries_clustered
    (id, notification_id, channel, target, priority, state, due_at_ms, lease_token,
     attempts, provider, vendor_message_id, last_error, sent_at_ms, updated_at_ms,
     pinned_provider, calling, in_doubt, expires_at_ms)
SELECT id, notification_id, channel, target, priority, state, due_at_ms, lease_token,
     attempts, provider, vendor_message_id, last_error, sent_at_ms, updated_at_ms,
     pinned_provider, calling, in_doubt, expires_at_ms
FROM deliveries;

DROP TABLE deliveries;
ALTER TABLE deliveries_clustered RENAME TO deliveries;

CREATE INDEX deliveries_pending ON deliveries (channel, priority, due_at_ms)
    WHERE state IN ('queued', 'retry_scheduled', 'sending');
CREATE INDEX deliveries_by_notification ON deliveries (notification_id);
CREATE INDEX deliveries_expiring ON deliveries (expires_at_ms)
    WHERE state IN ('queued', 'retry_scheduled') AND expires_at_ms IS NOT NULL;
CREATE INDEX deliveries_dead ON deliveries (updated_at_ms, id) WHERE state = 'dead';

CREATE TABLE idempotency_keys_clustered (
    tenant_id       TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_hash    BLOB NOT NULL,
    response_status INTEGER NOT NULL,
    response_body   TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key)
) WITHOUT ROWID;

INSERT INTO idempotency_keys_clustered
SELECT tenant_id, key, request_hash, response_status, response_body, created_at_ms
FROM idempotency_keys;

DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_clustered RENAME TO idempotency_keys;
