"""What each interchange thread is delivering right now, so an administrator can stop it.

A thread registers its batch (`batch`) and, around each message's delivery, the
message it is on (`enter`, `leave`). `cancel(queue_id, owners)` is called from the
control thread after `mailgate queue hold|delete|bounce` revoked the leases of
`owners` on `queue_id`: a message not yet started in a thread's batch is skipped
(`enter` returns False), one in progress has its session's `cancel(queue_id)` called
(a smarthost connection is broken, a postoffice delivery stops before its next write
into a mailbox). The queue stays the truth: the revoked lease already keeps the
thread's outcome from being recorded; this only stops the work early. One small lock
guards the registry, held for dictionary updates and a session's `cancel` (a flag and
a socket shutdown), never across a delivery.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

CANCELLED_REPLY = "451 4.3.0 attempt cancelled by the administrator"


@dataclass
class _Batch:
    thread: str
    session: Any  # a ConnectorSession, perhaps with `cancel(queue_id) -> str`
    queue_ids: frozenset[str]
    current: str | None = None
    done: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Cancelled:
    """One thread told to stop delivering a message, and how it stops."""

    thread: str
    owner: str
    queue_id: str
    how: str


class InFlight:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batches: dict[str, _Batch] = {}

    @contextlib.contextmanager
    def batch(
        self, owner: str, thread: str, session: Any, queue_ids: Iterable[str]
    ) -> Iterator[None]:
        """Register the batch a thread (lease owner `owner`) claimed, while it works on it."""
        entry = _Batch(thread, session, frozenset(queue_ids))
        with self._lock:
            self._batches[owner] = entry
        try:
            yield
        finally:
            with self._lock:
                if self._batches.get(owner) is entry:
                    del self._batches[owner]

    def enter(self, owner: str, queue_id: str) -> bool:
        """`owner` starts on `queue_id`; False if that was cancelled (skip the message)."""
        with self._lock:
            entry = self._batches.get(owner)
            if entry is None:
                return True
            if queue_id in entry.cancelled:
                return False
            entry.current = queue_id
            return True

    def leave(self, owner: str) -> None:
        with self._lock:
            entry = self._batches.get(owner)
            if entry is not None and entry.current is not None:
                entry.done.add(entry.current)
                entry.current = None

    def cancel(self, queue_id: str, owners: Iterable[str]) -> list[Cancelled]:
        """Stop the threads among `owners` that work on `queue_id` (see the module doc)."""
        found = []
        with self._lock:
            for owner in owners:
                entry = self._batches.get(owner)
                if entry is None or queue_id not in entry.queue_ids:
                    continue
                if entry.current == queue_id:
                    how = _cancel_session(entry.session, queue_id)
                elif queue_id in entry.done:
                    how = "already attempted; its outcome is being recorded"
                else:
                    entry.cancelled.add(queue_id)
                    how = "not started yet: skipped"
                found.append(Cancelled(entry.thread, owner, queue_id, how))
        return found


def _cancel_session(session: Any, queue_id: str) -> str:
    cancel = getattr(session, "cancel", None)
    if cancel is None:
        return "cannot be interrupted: its outcome will be discarded"
    return str(cancel(queue_id))
