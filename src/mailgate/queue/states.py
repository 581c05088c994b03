"""SQL fragments built from the model's state groupings: no query spells a list of states.

`sql_in(WAITING_STATES)` is `IN ('queued', 'deferred')`. Literals, not bound parameters:
SQLite uses a partial index only when the query's WHERE clause holds the index's own
predicate term for term, and the due index of queue/schema.py is declared on exactly
this text (tests/unit/test_queue_states.py checks that they still match). The values
are the model's enum values, never input from outside, so nothing can be injected here.
"""

from __future__ import annotations

from collections.abc import Iterable

from mailgate.model import FINAL_STATES, OPEN_STATES, WAITING_STATES, RecipientState


def sql_in(states: Iterable[RecipientState]) -> str:
    """`IN ('a', 'b')` for these states, in the order given."""
    return "IN (" + ", ".join(f"'{RecipientState(s).value}'" for s in states) + ")"


def sql_not_in(states: Iterable[RecipientState]) -> str:
    return "NOT " + sql_in(states)


WAITING = sql_in(WAITING_STATES)
"""`IN ('queued', 'deferred')`: waiting for an attempt; the predicate of recipients_due."""
OPEN = sql_not_in(FINAL_STATES)
"""`NOT IN ('delivered', 'bounced')`: not final (queued, active, deferred, held, quarantined)."""
OPEN_LISTED = sql_in(OPEN_STATES)
"""`IN ('queued', 'active', 'deferred', 'held', 'quarantined')`: OPEN spelled as the open
states themselves, so that the recipients_state index is read in one range per open state
and the finished rows (kept for tracking) are never stepped over."""
