"""dsn: delivery status notifications (RFC 3464 bounces) built and queued like any message."""
