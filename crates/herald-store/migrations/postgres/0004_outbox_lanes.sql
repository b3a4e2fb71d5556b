-- The relay publishes the highest lane's events first, in outbox order
-- within a lane: a flood of newsletters waiting in the outbox does not hold
-- a password reset back.
DROP INDEX outbox_pending;
CREATE INDEX outbox_pending ON outbox (lane, seq) WHERE published_at_ms IS NULL;
