-- Retention: finished notifications older than store.retention_hours are
-- deleted with their deliveries, attempts and idempotency key. The key is
-- kept on the notification so its row is found by primary key.
ALTER TABLE notifications ADD COLUMN idempotency_key TEXT;
