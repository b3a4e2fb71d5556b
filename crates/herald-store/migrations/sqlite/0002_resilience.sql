-- Resilience: a delivery can be pinned to one provider (an ambiguous outcome
-- the lane may not fail over from), and dead letters are listed by when
-- they died.

ALTER TABLE deliveries ADD COLUMN pinned_provider TEXT;

CREATE INDEX deliveries_dead ON deliveries (updated_at_ms, id) WHERE state = 'dead';
