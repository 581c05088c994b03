"""control: the control surface (what the running service answers, one interface for a
process and for the master) and the owner-only Unix socket that always answers it."""
