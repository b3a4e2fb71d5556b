-- The W3C trace context a notification was accepted under (set only while
-- tracing is on): its deliveries' spans join the API request's trace.
ALTER TABLE notifications ADD COLUMN traceparent TEXT;
