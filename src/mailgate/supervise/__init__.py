"""supervise: every thread the service runs is registered, watched and restarted here."""
