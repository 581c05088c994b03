"""mailgate: a supervised, durable mail connector interchange.

Moves mail between the SMTP world and file postoffices (MS Mail shaped trees of
Maildirs), store-and-forward through a durable queue. See docs/architecture.md.
"""

__version__ = "0.1.0"
