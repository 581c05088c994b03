"""master: `mailgate run` as a master process supervising worker processes by role."""
