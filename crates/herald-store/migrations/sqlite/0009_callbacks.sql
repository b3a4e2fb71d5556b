-- Each tenant's callback: the URL Herald posts delivery events to, and
-- which (a comma-separated list of delivery states). NULL: none.
ALTER TABLE tenants ADD COLUMN callback_url TEXT;
ALTER TABLE tenants ADD COLUMN callback_events TEXT;
