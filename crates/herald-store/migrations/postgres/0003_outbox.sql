-- The transactional outbox (Kafka bus): each notification's event is
-- written in the transaction that stores it, and the relay publishes the
-- unpublished ones in `seq` order. One relay at a time holds the lease.
CREATE TABLE outbox (
    seq             BIGSERIAL PRIMARY KEY,
    notification_id UUID NOT NULL,
    lane            BIGINT NOT NULL,
    key             TEXT NOT NULL,
    tenant_id       TEXT NOT NULL,
    correlation_id  TEXT,
    traceparent     TEXT,
    payload         TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    published_at_ms BIGINT
);
CREATE INDEX outbox_pending ON outbox (seq) WHERE published_at_ms IS NULL;

CREATE TABLE relay_lease (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    holder   TEXT NOT NULL,
    until_ms BIGINT NOT NULL
);
