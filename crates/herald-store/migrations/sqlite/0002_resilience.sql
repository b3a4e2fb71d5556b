-- Resilience: a delivery can be pinned to one provider (an ambiguous outcome
-- the lane may not fail over from, or a crash mid-call), waiting deliveries expire on time even
-- when nothing claims them (every circuit open), and dead letters are listed
-- by when they died.

ALTER TABLE deliveries ADD COLUMN pinned_provider TEXT;
-- A call to a backup provider is noted before it is made; a delivery taken
-- over from an expired lease (or released mid-call at shutdown) is "in doubt":
-- the provider it was calling may hold it already.
ALTER TABLE deliveries ADD COLUMN calling TEXT;
ALTER TABLE deliveries ADD COLUMN in_doubt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN expires_at_ms INTEGER;
UPDATE deliveries SET expires_at_ms =
    (SELECT n.expires_at_ms FROM notifications n WHERE n.id = deliveries.notification_id);

CREATE INDEX deliveries_expiring ON deliveries (expires_at_ms)
    WHERE state IN ('queued', 'retry_scheduled') AND expires_at_ms IS NOT NULL;

CREATE INDEX deliveries_dead ON deliveries (updated_at_ms, id) WHERE state = 'dead';
