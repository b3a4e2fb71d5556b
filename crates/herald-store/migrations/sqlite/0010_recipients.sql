-- The people a tenant notifies, under the tenant's own id for each: the
-- profile as JSON (addresses, locale, time zone, template data), and a
-- version every write bumps (a read-modify-write checks it).
CREATE TABLE recipients (
    tenant_id       TEXT NOT NULL,
    id              TEXT NOT NULL,
    profile         TEXT NOT NULL,
    version         INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;
