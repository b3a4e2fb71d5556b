-- What each recipient asked for (category → channel → opted in or out),
-- and each tenant's defaults and required categories: JSON, read whole.
ALTER TABLE recipients ADD COLUMN preferences TEXT;
ALTER TABLE tenants ADD COLUMN preferences TEXT;
