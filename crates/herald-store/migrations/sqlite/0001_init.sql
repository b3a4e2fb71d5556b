-- Herald's embedded schema. Times are Unix milliseconds; ids are UUIDv7 as
-- 16-byte blobs (time-ordered, so inserts append to the primary key b-trees).

CREATE TABLE tenants (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL
);

-- Keys are stored as SHA-256 hashes only; the key itself is shown once.
CREATE TABLE api_keys (
    key_hash      BLOB PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    label         TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE notifications (
    id             BLOB PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    priority       INTEGER NOT NULL,
    payload        TEXT NOT NULL,      -- the request as JSON
    accepted_at_ms INTEGER NOT NULL,
    expires_at_ms  INTEGER
);

-- One row per notification x channel (x device for push). The pending rows
-- ARE the local bus: claimed by (channel, lane, due time) under a lease. A
-- row in 'sending' has due_at_ms = its lease expiry, so a crashed worker's
-- row becomes due again by itself.
CREATE TABLE deliveries (
    id              BLOB PRIMARY KEY,
    notification_id BLOB NOT NULL,
    channel         TEXT NOT NULL,
    target          INTEGER NOT NULL,
    priority        INTEGER NOT NULL,
    state           TEXT NOT NULL,
    due_at_ms       INTEGER NOT NULL,
    lease_token     INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 0,
    provider        TEXT,
    -- The vendor's id for the accepted message (SendGrid X-Message-Id,
    -- Twilio sid, FCM name): how receipts find their delivery.
    vendor_message_id TEXT,
    last_error      TEXT,
    sent_at_ms      INTEGER,
    updated_at_ms   INTEGER NOT NULL
);

CREATE INDEX deliveries_pending ON deliveries (channel, priority, due_at_ms)
    WHERE state IN ('queued', 'retry_scheduled', 'sending');
CREATE INDEX deliveries_by_notification ON deliveries (notification_id);

CREATE TABLE attempts (
    delivery_id   BLOB NOT NULL,
    attempt       INTEGER NOT NULL,
    provider      TEXT,
    started_at_ms INTEGER NOT NULL,
    latency_ms    INTEGER NOT NULL,
    outcome       TEXT NOT NULL,
    status_code   INTEGER,
    error         TEXT
);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id);

CREATE TABLE idempotency_keys (
    tenant_id       TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_hash    BLOB NOT NULL,
    response_status INTEGER NOT NULL,
    response_body   TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
