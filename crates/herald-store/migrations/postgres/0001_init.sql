-- Herald's PostgreSQL schema: the same tables and meaning as the SQLite one
-- (migrations/sqlite), in PostgreSQL's types. Times are Unix milliseconds;
-- ids are UUIDv7 (time-ordered, so inserts append to the primary keys).

CREATE TABLE tenants (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL
);

-- Keys are stored as SHA-256 hashes only; the key itself is shown once.
CREATE TABLE api_keys (
    key_hash      BYTEA PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants(id),
    label         TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE notifications (
    id             UUID PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    priority       BIGINT NOT NULL,
    payload        TEXT NOT NULL,      -- the request as JSON, as accepted
    accepted_at_ms BIGINT NOT NULL,
    expires_at_ms  BIGINT
);

-- One row per notification x channel (x device for push). With the local
-- bus the pending rows ARE the queue: claimed by (channel, lane, due time)
-- with FOR UPDATE SKIP LOCKED under a lease. A row in 'sending' has
-- due_at_ms = its lease expiry, so a crashed worker's row comes due again.
CREATE TABLE deliveries (
    id                UUID PRIMARY KEY,
    notification_id   UUID NOT NULL,
    channel           TEXT NOT NULL,
    target            BIGINT NOT NULL,
    priority          BIGINT NOT NULL,
    state             TEXT NOT NULL,
    due_at_ms         BIGINT NOT NULL,
    lease_token       BIGINT,
    attempts          BIGINT NOT NULL DEFAULT 0,
    provider          TEXT,
    vendor_message_id TEXT,
    last_error        TEXT,
    sent_at_ms        BIGINT,
    updated_at_ms     BIGINT NOT NULL,
    pinned_provider   TEXT,
    calling           TEXT,
    in_doubt          BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at_ms     BIGINT
);

-- The claim's index holds only pending rows, so it stays the size of the
-- queue however many finished rows the table keeps.
CREATE INDEX deliveries_pending ON deliveries (channel, priority, due_at_ms)
    WHERE state IN ('queued', 'retry_scheduled', 'sending');
CREATE INDEX deliveries_by_notification ON deliveries (notification_id);
CREATE INDEX deliveries_expiring ON deliveries (expires_at_ms)
    WHERE state IN ('queued', 'retry_scheduled') AND expires_at_ms IS NOT NULL;
CREATE INDEX deliveries_dead ON deliveries (updated_at_ms, id) WHERE state = 'dead';

CREATE TABLE attempts (
    delivery_id   UUID NOT NULL,
    attempt       BIGINT NOT NULL,
    provider      TEXT,
    started_at_ms BIGINT NOT NULL,
    latency_ms    BIGINT NOT NULL,
    outcome       TEXT NOT NULL,
    status_code   BIGINT,
    error         TEXT
);
CREATE INDEX attempts_by_delivery ON attempts (delivery_id);

CREATE TABLE idempotency_keys (
    tenant_id       TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_hash    BYTEA NOT NULL,
    response_status BIGINT NOT NULL,
    response_body   TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
