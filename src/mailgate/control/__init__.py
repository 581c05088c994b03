"""control: the owner-only Unix socket that always answers (status, pause, stop, ...)."""
