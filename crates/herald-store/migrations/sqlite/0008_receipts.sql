-- Vendor receipts. A delivery keeps the highest-ranked receipt it has
-- heard (delivered 1, undelivered 2, bounced 3, complained 4), also one
-- that came before the send's own answer was recorded: recording `sent`
-- then takes the receipt's state instead.
ALTER TABLE deliveries ADD COLUMN receipt TEXT;
ALTER TABLE deliveries ADD COLUMN receipt_rank INTEGER NOT NULL DEFAULT 0;

-- Every distinct receipt, for the delivery's timeline (a repeat of the
-- same event is kept once).
CREATE TABLE receipts (
    delivery_id    BLOB NOT NULL,
    provider       TEXT NOT NULL,
    kind           TEXT NOT NULL,
    at_ms          INTEGER NOT NULL,
    reason         TEXT,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, kind, at_ms)
);
