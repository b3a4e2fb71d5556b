-- What a key may do: 'send', 'read', 'admin', comma-separated. NULL for the
-- keys made before scopes: they keep every scope they had.
ALTER TABLE api_keys ADD COLUMN scopes TEXT;
