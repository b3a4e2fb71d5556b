-- One row that readiness rewrites, padded to a few pages, to learn whether
-- the store takes writes again after they failed (a full disk, a server
-- that turned read-only).
CREATE TABLE health_probe (
    id BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    pad BYTEA NOT NULL
);
