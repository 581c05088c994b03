"""security: password hashing, the credentials file, TLS certificates."""
