-- The people a tenant notifies, under the tenant's own id for each: the
-- profile as JSON text (addresses, locale, time zone, template data; read
-- whole, never queried inside), and a version every write bumps (a
-- read-modify-write checks it).
CREATE TABLE recipients (
    tenant_id       TEXT NOT NULL,
    id              TEXT NOT NULL,
    profile         TEXT NOT NULL,
    version         BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
