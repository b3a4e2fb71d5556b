-- One row that readiness rewrites, padded to a few pages, to learn whether
-- the store takes writes again after they failed (a full disk, say).
CREATE TABLE health_probe (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    pad BLOB NOT NULL
);
