"""Counting PostgreSQL round trips: each time a thread waited for the server's reply.

Counted at psycopg's surface, below mailgate's own code, per thread: a statement
executed outside pipeline mode (send, wait for the result: one round trip), a pipeline
`sync()`, the leaving of a pipeline (psycopg sends a Sync and waits for every reply
still due), and a cursor that had to ask for its pipelined result (a flush request).
Statements queued in a pipeline send without waiting and count nothing. Used by the
store tests and bench/commit_rounds.py; patches psycopg's classes while it is open.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg.cursor import Cursor


class RoundTrips:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[int] = collections.Counter()

    def add(self) -> None:
        with self._lock:
            self._counts[threading.get_ident()] += 1

    def of(self, thread: threading.Thread) -> int:
        """The round trips `thread` made while counting."""
        with self._lock:
            return self._counts[thread.ident or 0]

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


@contextlib.contextmanager
def counting() -> Iterator[RoundTrips]:
    trips = RoundTrips()
    patches: list[tuple[type, str, Callable[..., Any]]] = []

    def wrap(cls: type, name: str, counts: Callable[..., bool]) -> None:
        original = getattr(cls, name)

        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            if counts(self):
                trips.add()
            return original(self, *args, **kwargs)

        patches.append((cls, name, original))
        setattr(cls, name, counted)

    wrap(Cursor, "execute", lambda cur: cur.connection._pipeline is None)
    wrap(Cursor, "_fetch_pipeline", lambda cur: not cur.pgresult and cur.connection._pipeline)
    wrap(psycopg.Pipeline, "sync", lambda pipe: True)
    wrap(psycopg.Pipeline, "__exit__", lambda pipe: pipe.level == 1)  # the outermost's Sync
    try:
        yield trips
    finally:
        for cls, name, original in reversed(patches):
            setattr(cls, name, original)
