"""receive: accepting mail (SMTP now, postoffice outboxes later) into the durable queue."""
