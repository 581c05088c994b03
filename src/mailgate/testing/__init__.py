"""testing: fault injection compiled into the service, off unless explicitly enabled."""
